from caelum_mcp.cli import main

main()
