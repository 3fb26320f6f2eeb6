from pressured.cli import main

main()
