from muxdeploy.cli import main

if __name__ == "__main__":  # guarded: spawned worker processes (INT8 quantizer) re-import this module
    main()
