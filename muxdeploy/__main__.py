from muxdeploy.cli import main

main()
