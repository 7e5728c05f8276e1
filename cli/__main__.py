from proofkd.cli import main

raise SystemExit(main())
