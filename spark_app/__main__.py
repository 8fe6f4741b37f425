import sys

from spark_app.cli import main

sys.exit(main())
