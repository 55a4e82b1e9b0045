from tritune.cli import main

raise SystemExit(main())
