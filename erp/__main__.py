from erp.cli import main

main()
