from gpd.cli.main import main

raise SystemExit(main())
