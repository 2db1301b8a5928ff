from soulray.cli import main

raise SystemExit(main())
