# spark-submit / container entry point; the logic lives in spark_app (`cltv status --help`)
import sys

from spark_app.cli import main

if __name__ == "__main__":
    sys.exit(main(["status", *sys.argv[1:]]))
