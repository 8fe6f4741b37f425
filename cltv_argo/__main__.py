from cltv_argo.cli import main

raise SystemExit(main())
