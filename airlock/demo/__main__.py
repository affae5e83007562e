from airlock.demo.run import main

main()
