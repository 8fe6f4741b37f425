# spark-submit entry point; the logic lives in spark_app (`cltv score --help`)
import sys

from spark_app.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
