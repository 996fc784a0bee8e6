from catsith_sweep.cli import main

raise SystemExit(main())
