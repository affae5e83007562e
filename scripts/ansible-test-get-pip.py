"""Offline stand-in for ansible-test's get-pip bootstrap script (docs/ansible.md, "Offline tooling").

ansible-test downloads ``get-pip-<version>.py`` from the internet to put pip into the virtualenvs it
creates for sanity tests. Here there is no internet: this shim installs the bundled pip with
``ensurepip`` and then installs what ansible-test asked for from the local package sources the pip
configuration file names (ansible-test strips PIP_* variables, so the file is what counts)."""

import os
import subprocess
import sys


def main() -> int:
    env = dict(os.environ)
    env.pop("PIP_CONFIG_FILE", None)  # ansible-test points this at /dev/null-like files; use the real one
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"], check=True, env=env)
    # get-pip's own options mean nothing to pip install
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    if args:
        r = subprocess.run([sys.executable, "-m", "pip", "install", *args], env=env)
        if r.returncode != 0:
            print(f"get-pip shim: pip install {' '.join(args)} failed; keeping the ensurepip version",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
