"""The loop across the air gap, end to end with real gpg, real repositories and the real CLI:
three sites on different versions (one with a pruned version, one with nothing) write signed
receipts; the release side verifies them (a tampered and a replayed receipt are refused with their
documented exit codes), plans the minimal bundle per site, builds it, and every host installs it
with Repository.install_from_bundle and ends on the target."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airlock.bundle import build_bundle, stage_bundle
from airlock.bundle.signing import SignerInfo
from airlock.errors import RepositoryError
from airlock.hashing import sha256_file, tree_files
from airlock.receipt import Receipt
from airlock.receipt.create import host_facts
from airlock.receipt.plan import _release, build_from_plan, make_plan, simulate
from airlock.receipt.verify import VerifiedReceipt
from airlock.repo import Repository
from tests.bundle.conftest import Keys
from tests.repo.conftest import Versions

MODEL = "m"
PROFILE = "appliance-test"
REPO_ROOT = Path(__file__).resolve().parents[2]


def airlock(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", "from airlock.cli import main; main()", *args], env=e,
                          capture_output=True, text=True, timeout=300)


def _bundle(tmp: Path, keys: Keys, name: str, seq: int, model: dict[str, object]) -> Path:
    spec = tmp / f"{name}.yml"
    spec.write_text(yaml.safe_dump({"bundle_id": name, "compatible": PROFILE, "sequence": seq,
                                    "block_size": 4096, "models": [model]}))
    build_bundle(spec, tmp / name, signer=keys.fpr["signer"], gnupghome=keys.home)
    return tmp / name


def _install(root: Path, bundle: Path, keys: Keys, work: Path) -> Repository:
    repo = Repository(root, lock_timeout=5)
    stage = work / f"stage-{root.name}-{bundle.name}"
    staged = stage_bundle(bundle, stage, keys.trust(["signer"], "signer"))
    repo.install_from_bundle(staged)
    shutil.rmtree(stage, ignore_errors=True)
    return repo


def _hashes(d: Path) -> dict[str, str]:
    return {rel: sha256_file(d / rel) for rel in tree_files(d)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, keys: Keys, versions: Versions) -> dict[str, object]:
    from airlock.delta import make_delta
    from tests.repo.models import make_model

    tmp = tmp_path_factory.mktemp("loop")
    v13 = make_model(tmp / "src-1.3.0", change_layer=1, seed=5)
    d23 = tmp / "m-1.2.0-1.3.0.aldelta"
    make_delta(versions.src["1.2.0"], v13, d23, from_version="1.2.0", to_version="1.3.0")
    rel = {
        "b1": _bundle(tmp, keys, "rel-1", 1, {"name": MODEL, "version": "1.0.0",
                                              "path": str(versions.src["1.0.0"])}),
        "b2": _bundle(tmp, keys, "rel-2", 2, {"name": MODEL, "version": "1.1.0", "from_version": "1.0.0",
                                              "delta_file": str(versions.deltas[("1.0.0", "1.1.0")])}),
        "b3": _bundle(tmp, keys, "rel-3", 3, {"name": MODEL, "version": "1.2.0", "from_version": "1.1.0",
                                              "delta_file": str(versions.deltas[("1.1.0", "1.2.0")])}),
        "b4": _bundle(tmp, keys, "rel-4", 4, {"name": MODEL, "version": "1.3.0", "from_version": "1.2.0",
                                              "delta_file": str(d23)}),
    }
    # the release repository: every released bundle installed into it
    release = tmp / "release"
    for b in ("b1", "b2", "b3", "b4"):
        _install(release, rel[b], keys, tmp).close()
    hosts = {"a1": ["b1"], "a2": ["b1", "b2"], "b1": ["b1", "b2", "b3"], "c1": []}
    roots = {}
    for host, bundles in hosts.items():
        roots[host] = tmp / "sites" / host
        roots[host].mkdir(parents=True)
        for b in bundles:
            _install(roots[host], rel[b], keys, tmp).close()
    r = Repository(roots["b1"], lock_timeout=5)
    r.prune(MODEL, keep=1)  # site-b's host pruned 1.0.0: 1.2.0 active, 1.1.0 previous, 1.0.0 a catalog row
    assert r.state()["models"][MODEL]["versions"]["1.0.0"] == "pruned"
    r.close()
    return {"tmp": tmp, "release": release, "roots": roots, "rel": rel, "v13": v13, "d23": d23}


SITES = {"site-a": ["a1", "a2"], "site-b": ["b1"], "site-c": ["c1"]}


def _create(world: dict[str, object], keys: Keys, site: str, out: Path,
            seq: int) -> subprocess.CompletedProcess[str]:
    roots: dict[str, Path] = world["roots"]  # type: ignore[assignment]
    args = [a for h in SITES[site] for a in ("--root", f"{h}={roots[h]}")]
    return airlock("receipt", "create", *args, "--site", site, "--signer", keys.fpr["other"], "--gnupghome",
                   str(keys.home), "--compatible", PROFILE, "--sequence", str(seq), "-o", str(out), "--json")


def test_three_sites(world: dict[str, object], keys: Keys, versions: Versions, tmp_path: Path) -> None:
    tmp: Path = world["tmp"]  # type: ignore[assignment]
    roots: dict[str, Path] = world["roots"]  # type: ignore[assignment]
    before = {h: _hashes(r) for h, r in roots.items()}
    stick = tmp_path / "stick"
    stick.mkdir()
    for i, site in enumerate(SITES):
        p = _create(world, keys, site, stick / f"{site}.json", 100 + i)
        assert p.returncode == 0, p.stderr
    assert {h: _hashes(r) for h, r in roots.items()} == before  # creating a receipt changes nothing
    doc = json.loads((stick / "site-b.json").read_bytes())
    b1 = doc["hosts"]["b1"]["models"][MODEL]
    assert b1["active"] == "1.2.0" and b1["versions"]["1.0.0"]["state"] == "pruned"
    assert b1["versions"]["1.1.0"]["bundle_id"] == "rel-2"
    assert b1["deltas"] == [["1.0.0", "1.1.0"], ["1.1.0", "1.2.0"]]
    assert doc["hosts"]["b1"]["audit_head"]["seq"] > 0 and str(tmp) not in (stick / "site-b.json").read_text()
    assert doc["hosts"]["b1"]["bundle_sequence"] == 3

    # release side: pinned site key, anti-replay state
    site_key = keys.keyring("other")
    state = tmp_path / "state"
    accepted = tmp_path / "accepted"
    accepted.mkdir()
    pins = ["--trust", keys.fpr["other"], "--keyring", str(site_key), "--state", str(state)]
    for site in SITES:
        p = airlock("receipt", "verify", str(stick / f"{site}.json"), *pins, "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["site"] == site
        for suffix in ("", ".asc"):
            shutil.copy(stick / f"{site}.json{suffix}", accepted / f"{site}.json{suffix}")

    # replayed: the same receipt again, and an older one of site-a, are refused (16)
    p = airlock("receipt", "verify", str(stick / "site-a.json"), *pins)
    assert p.returncode == 16 and "[replay]" in p.stderr, p.stderr
    old = tmp_path / "old"
    old.mkdir()
    assert _create(world, keys, "site-a", old / "site-a.json", 50).returncode == 0
    p = airlock("receipt", "verify", str(old / "site-a.json"), *pins)
    assert p.returncode == 16, p.stderr
    # tampered: one byte of the signed receipt changed (a host claims 1.2.0), refused (10), state kept
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (stick / "site-b.json").read_bytes().replace(b'"active":"1.2.0"', b'"active":"1.3.0"', 1)
    (bad / "site-b.json").write_bytes(data)
    shutil.copy(stick / "site-b.json.asc", bad / "site-b.json.asc")
    state_before = (state / "site-b.json").read_bytes()
    p = airlock("receipt", "verify", str(bad / "site-b.json"), *pins)
    assert p.returncode == 10 and "bad-signature" in p.stderr, p.stderr
    assert (state / "site-b.json").read_bytes() == state_before
    # a site key pinned to another site is refused for this one (10)
    p = airlock("receipt", "verify", str(old / "site-a.json"), "--trust", f"site-z={keys.fpr['other']}",
                "--keyring", str(site_key), "--state", str(tmp_path / "state2"))
    assert p.returncode == 10 and "untrusted-signer" in p.stderr, p.stderr

    # plan: the minimal content per site
    plan_path = tmp_path / "plan.json"
    p = airlock("bundle", "plan", "--receipts", str(accepted), "--target", f"{MODEL}=1.3.0", "--release",
                str(world["release"]), *pins, "-o", str(plan_path), "--json")
    assert p.returncode == 0, p.stderr
    plan = json.loads(plan_path.read_text())
    d01 = versions.deltas[("1.0.0", "1.1.0")].stat().st_size
    d12 = versions.deltas[("1.1.0", "1.2.0")].stat().st_size
    d23 = world["d23"].stat().st_size  # type: ignore[attr-defined]
    v13: Path = world["v13"]  # type: ignore[assignment]
    full = sum((v13 / r).stat().st_size for r in tree_files(v13))
    sites = plan["sites"]
    assert sites["site-a"]["bytes"] == d01 + d12 + d23  # a1 needs every delta, a2 the last two
    assert sites["site-b"]["bytes"] == d23  # from the active 1.2.0 (1.0.0 is pruned there)
    assert sites["site-c"]["bytes"] == full  # nothing usable: the full model
    for s in sites.values():
        assert s["bytes_full_models"] == full and s["bytes_every_delta"] == d01 + d12 + d23
    assert sites["site-a"]["models"][MODEL]["hosts"]["a2"]["route"] == ["1.1.0->1.2.0", "1.2.0->1.3.0"]
    assert plan["layout"] == "per-site" and len(plan["bundles"]) == 3
    assert sites["site-b"]["bundle_sequence"] == 4
    print("bytes per site:", json.dumps({s: {k: v for k, v in p.items() if k.startswith("bytes")}
                                         for s, p in sites.items()}), "totals:", json.dumps(plan["totals"]))

    # a plan refuses receipts that are not the last accepted ones
    p = airlock("bundle", "plan", "--receipts", str(old), "--target", f"{MODEL}=1.3.0", "--release",
                str(world["release"]), *pins, "-o", str(tmp_path / "plan2.json"))
    assert p.returncode == 16, p.stderr

    # build one bundle per site and install it on every host of the site
    out = tmp_path / "bundles"
    p = airlock("bundle", "build", "--plan", str(plan_path), "-o", str(out), "--signer", keys.fpr["signer"],
                "--gnupghome", str(keys.home), "--json")
    assert p.returncode == 0, p.stderr
    want = _hashes(v13)
    for site, hosts in SITES.items():
        for h in hosts:
            repo = _install(roots[h], out / site, keys, tmp_path)
            st = repo.state()["models"][MODEL]
            assert st["active"] == "1.3.0", (site, h, st)
            assert _hashes(roots[h] / "model_repo" / MODEL / "1.3.0") == want
            assert repo.verify(MODEL)["ok"]
            repo.close()


def test_playbook_receipt_from_the_local_fleet(world: dict[str, object], keys: Keys, tmp_path: Path) -> None:
    """playbooks/receipt.yml on the embedded local fleet: airlock_model_info gathers each host's facts
    (read-only), the control node writes and signs the receipt; it verifies with the site key."""
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    _install(fleet / "local-a", world["rel"]["b1"], keys, tmp_path).close()  # type: ignore[index]
    repo = _install(fleet / "local-b", world["rel"]["b1"], keys, tmp_path)  # type: ignore[index]
    _install(fleet / "local-b", world["rel"]["b2"], keys, tmp_path).close()  # type: ignore[index]
    repo.close()
    out = tmp_path / "stick" / "site-l.json"
    out.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
           "ANSIBLE_COLLECTIONS_PATH": str(REPO_ROOT / ".collections"), "ANSIBLE_NOCOLOR": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    extra = {"airlock_fleet_dir": fleet, "airlock_receipt_site": "site-l", "airlock_receipt_out": out,
             "airlock_receipt_signer": keys.fpr["other"], "airlock_receipt_gnupghome": keys.home,
             "airlock_compatible": PROFILE}
    p = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                        str(REPO_ROOT / "inventories" / "local"),
                        str(REPO_ROOT / "playbooks" / "receipt.yml"),
                        *[a for k, v in extra.items() for a in ("-e", f"{k}={v}")]],
                       env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    doc = json.loads(out.read_bytes())
    hosts = doc["hosts"]
    assert sorted(hosts) == ["local-a", "local-b", "local-c"]
    assert hosts["local-a"]["models"][MODEL]["active"] == "1.0.0"
    assert hosts["local-b"]["models"][MODEL]["active"] == "1.1.0" and hosts["local-c"]["models"] == {}
    assert not Path(f"{out}.hosts.json").exists() and str(fleet) not in out.read_text()
    v = airlock("receipt", "verify", str(out), "--trust", f"site-l={keys.fpr['other']}", "--keyring",
                str(keys.keyring("other")), "--state", str(tmp_path / "state"), "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["hosts"] == ["local-a", "local-b", "local-c"], v.stderr


def _verified(site: str, roots: dict[str, Path]) -> VerifiedReceipt:
    """A receipt of these hosts as `receipt verify` returns it (the planner reads only the receipt)."""
    hosts = {}
    for name, root in roots.items():
        repo = Repository(root, lock_timeout=5)
        hosts[name] = host_facts(repo)
        repo.close()
    r = Receipt(site=site, sequence=1, created="2026-12-03T10:00:00Z", airlock_version="0.1.0",
                compatible=PROFILE, hosts=hosts)
    return VerifiedReceipt(r, SignerInfo("F" * 40, "F" * 40, None, None), "0" * 64, Path(site), None)


def _host(world: dict[str, object], keys: Keys, root: Path, bundles: list[str]) -> Path:
    for b in bundles:
        _install(root, world["rel"][b], keys, root.parent).close()  # type: ignore[index]
    return root


def test_mixed_site_gets_what_every_host_can_install(world: dict[str, object], keys: Keys,
                                                     tmp_path: Path) -> None:
    """x serves the target (1.0.0 and 1.1.0 pruned), y has only 1.0.0: the union of chains would
    not install on x (proved with a real bundle), so the plan ships the full target, which does."""
    x = _host(world, keys, tmp_path / "x", ["b1", "b2", "b3", "b4"])
    repo = Repository(x, lock_timeout=5)
    repo.prune(MODEL, keep=2)
    repo.close()
    y = _host(world, keys, tmp_path / "y", ["b1"])
    vr = _verified("mixed", {"x": x, "y": y})
    release = _release(world["release"], MODEL, "1.3.0")  # type: ignore[arg-type]
    union = release.chain("1.0.0")
    assert union is not None and [e.version for e in union] == ["1.1.0", "1.2.0", "1.3.0"]
    assert not simulate(vr.receipt.hosts["x"], MODEL, union, "1.3.0").ok
    # reality agrees with the simulation: a bundle of that chain is refused on x
    spec = tmp_path / "union.yml"
    spec.write_text(yaml.safe_dump({"bundle_id": "union", "compatible": PROFILE, "sequence": 9, "models": [
        {"name": MODEL, "version": e.version, "from_version": e.from_version, "delta_file": e.source}
        for e in union]}))
    build_bundle(spec, tmp_path / "union", signer=keys.fpr["signer"], gnupghome=keys.home)
    with pytest.raises(RepositoryError):
        _install(x, tmp_path / "union", keys, tmp_path)
    plan = make_plan([vr], world["release"], {MODEL: "1.3.0"})  # type: ignore[arg-type]
    site = plan["sites"]["mixed"]
    assert [e["kind"] for e in site["models"][MODEL]["entries"]] == ["full"]
    assert site["models"][MODEL]["hosts"]["x"]["how"] == "current"
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    built = build_from_plan(tmp_path / "plan.json", tmp_path / "out", signer=keys.fpr["signer"],
                            gnupghome=keys.home)
    assert [b["name"] for b in built] == ["mixed"]
    for root in (x, y):
        repo = _install(root, tmp_path / "out" / "mixed", keys, tmp_path)
        assert repo.state()["models"][MODEL]["active"] == "1.3.0" and repo.verify(MODEL)["ok"]
        repo.close()


def test_shared_bundle_when_every_site_needs_the_same(world: dict[str, object], keys: Keys,
                                                     tmp_path: Path) -> None:
    roots = {s: _host(world, keys, tmp_path / s, ["b1", "b2", "b3"]) for s in ("s1", "s2")}
    vrs = [_verified(s, {f"{s}-h": root}) for s, root in roots.items()]
    plan = make_plan(vrs, world["release"], {MODEL: "1.3.0"})  # type: ignore[arg-type]
    d23 = world["d23"].stat().st_size  # type: ignore[attr-defined]
    assert plan["layout"] == "shared" and plan["totals"]["shared_bytes_per_site"] == d23
    assert plan["bundles"][0]["sites"] == ["s1", "s2"] and plan["bundles"][0]["sequence"] == 4
    per_site = make_plan(vrs, world["release"], {MODEL: "1.3.0"}, layout="per-site")  # type: ignore[arg-type]
    assert [b["name"] for b in per_site["bundles"]] == ["s1", "s2"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    build_from_plan(tmp_path / "plan.json", tmp_path / "out", signer=keys.fpr["signer"], gnupghome=keys.home)
    for root in roots.values():
        repo = _install(root, tmp_path / "out" / "shared", keys, tmp_path)
        assert repo.state()["models"][MODEL]["active"] == "1.3.0"
        repo.close()


def test_plan_refusals_and_untrusted_digests(world: dict[str, object], keys: Keys, tmp_path: Path) -> None:
    from dataclasses import replace

    from airlock.receipt.plan import PlanError

    # a host running a newer version than the target: a rollback is not planned silently
    ahead = _verified("r", {"rel": world["release"]})  # type: ignore[dict-item]
    with pytest.raises(PlanError) as e:
        make_plan([ahead], world["release"], {MODEL: "1.2.0"})  # type: ignore[arg-type]
    assert e.value.rule == "plan-ahead"
    with pytest.raises(PlanError) as e:  # a target the release side does not hold
        make_plan([ahead], world["release"], {MODEL: "9.0.0"})  # type: ignore[arg-type]
    assert e.value.rule == "plan-target"
    # a host whose 1.0.0 claims another signed manifest under a known bundle id is not a delta source
    y = _host(world, keys, tmp_path / "y", ["b1"])
    vr = _verified("odd", {"y": y})
    ms = vr.receipt.hosts["y"].models[MODEL]
    ms.versions["1.0.0"] = replace(ms.versions["1.0.0"], manifest_sha256="cd" * 32)
    plan = make_plan([vr], world["release"], {MODEL: "1.3.0"})  # type: ignore[arg-type]
    host = plan["sites"]["odd"]["models"][MODEL]["hosts"]["y"]
    assert host["how"] == "full" and "differs from the release side's" in host["notes"][0]


def test_payloads_and_tier_locations(world: dict[str, object], keys: Keys, versions: Versions,
                                     tmp_path: Path) -> None:
    """Receipts carry each host's other payloads (from the kept signed manifests: wheels, Debian
    packages, images by bundle path and sha256) and each version's storage tier; the plan ships only
    the payloads a host lacks (--payloads DIR), the bundle built from it carries them, and after the
    install nothing is missing any more."""
    from airlock.receipt.model import canonical_bytes, parse_receipt

    src = tmp_path / "src"
    for rel, data in (("a.whl", b"wheel a"), ("old.deb", b"deb v1")):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    spec = tmp_path / "pay.yml"
    spec.write_text(yaml.safe_dump({"bundle_id": "pay-2", "compatible": PROFILE, "sequence": 2,
                                    "block_size": 4096, "wheels": [str(src / "a.whl")],
                                    "debs": [str(src / "old.deb")],
                                    "models": [{"name": MODEL, "version": "1.1.0", "from_version": "1.0.0",
                                                "delta_file": str(versions.deltas[("1.0.0", "1.1.0")])}]}))
    build_bundle(spec, tmp_path / "pay-2", signer=keys.fpr["signer"], gnupghome=keys.home)
    host = _host(world, keys, tmp_path / "h", ["b1"])
    _install(host, tmp_path / "pay-2", keys, tmp_path).close()
    vr = _verified("site-p", {"h": host})
    facts = vr.receipt.hosts["h"]
    assert facts.payloads == {"wheelhouse/a.whl": sha256_file(src / "a.whl"),
                              "debs/old.deb": sha256_file(src / "old.deb")}
    assert {k.location for k in facts.models[MODEL].versions.values()} == {"hot"}
    again = parse_receipt(canonical_bytes(vr.receipt))  # the signed form keeps both
    assert again.hosts["h"].payloads == facts.payloads
    assert again.hosts["h"].models[MODEL].versions["1.1.0"].location == "hot"

    # the release's payloads: a.whl unchanged, old.deb rebuilt, a new image
    rel = tmp_path / "release-payloads"
    for path, data in (("wheelhouse/a.whl", b"wheel a"), ("debs/old.deb", b"deb v2"),
                       ("images/triton.tar", b"image" * 100)):
        (rel / path).parent.mkdir(parents=True, exist_ok=True)
        (rel / path).write_bytes(data)
    plan = make_plan([vr], world["release"], {MODEL: "1.3.0"}, payloads=rel)  # type: ignore[arg-type]
    site = plan["sites"]["site-p"]
    assert [e["dest"] for e in site["payloads"]["entries"]] == ["debs/old.deb", "images/triton.tar"]
    assert site["payloads"]["bytes"] == 6 + 500 and site["payloads"]["bytes_all"] == 7 + 6 + 500
    assert site["bytes"] == site["models"][MODEL]["bytes"] + 506
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    build_from_plan(tmp_path / "plan.json", tmp_path / "out", signer=keys.fpr["signer"], gnupghome=keys.home)
    bundle = tmp_path / "out" / "site-p"
    assert (bundle / "debs" / "old.deb").read_bytes() == b"deb v2"
    assert (bundle / "images" / "triton.tar").exists()
    assert not (bundle / "wheelhouse").exists()
    repo = _install(host, bundle, keys, tmp_path)
    assert repo.state()["models"][MODEL]["active"] == "1.3.0"
    repo.close()
    after = make_plan([_verified("site-p", {"h": host})], world["release"], {MODEL: "1.3.0"},  # type: ignore[arg-type]
                      payloads=rel)
    assert after["sites"]["site-p"]["payloads"]["entries"] == [] and after["sites"]["site-p"]["bytes"] == 0
