from caelum_mcp.serving.cli import main

main()
