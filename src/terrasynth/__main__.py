from terrasynth.cli import main

raise SystemExit(main())
