from bertforge.cli import main

main()
