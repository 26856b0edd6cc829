from tive.cli import main

raise SystemExit(main())
