from alexfeat.cli.app import main

main()
