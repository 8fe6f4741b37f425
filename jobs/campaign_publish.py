# spark-submit entry of `cltv campaign publish` (no logic here)
import sys

from spark_app.cli import main

if __name__ == "__main__":
    sys.exit(main(["campaign", "publish", *sys.argv[1:]]))
