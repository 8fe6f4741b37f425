#!/usr/bin/env bash
# Entrypoint of the job image (PID 1 is tini). `spark-submit …` and `cltv …` pass through; an argument
# list starting with an option goes to cltv; anything else is exec'd as given.
#
# Before handing over:
# * Kerberos: with KRB5_PRINCIPAL set and the keytab (KRB5_KEYTAB, mounted from a Secret) readable, kinit
#   fills the ticket cache used by WebHDFS (wait-for-inputs, publish) and the HDFS client.
# * spark-submit on YARN: --principal/--keytab so Spark renews delegation tokens of long jobs; with
#   SPARK_PYTHON_ARCHIVE (a packed virtualenv on HDFS) executors unpack and use that Python.
# * spark-submit on k8s:// (client mode, the driver is this pod): executors use JOB_IMAGE, run in
#   POD_NAMESPACE, reach the driver at POD_IP and are owned by this pod (POD_NAME), so they go with it.
set -euo pipefail

KRB5_KEYTAB="${KRB5_KEYTAB:-/etc/security/keytabs/cltv.keytab}"

have_keytab() {
  [[ -n "${KRB5_PRINCIPAL:-}" && -r "${KRB5_KEYTAB}" ]]
}

kerberos_login() {
  if have_keytab; then
    kinit -kt "${KRB5_KEYTAB}" "${KRB5_PRINCIPAL}"
  fi
}

master_of() {
  local previous=""
  for arg in "$@"; do
    case "${arg}" in
      --master=*) echo "${arg#--master=}"; return ;;
    esac
    if [[ "${previous}" == "--master" ]]; then
      echo "${arg}"
      return
    fi
    previous="${arg}"
  done
  echo "${SPARK_MASTER:-}"
}

spark_submit() {
  local master extra=()
  master="$(master_of "$@")"
  case "${master}" in
    yarn*)
      if have_keytab; then
        extra+=(--principal "${KRB5_PRINCIPAL}" --keytab "${KRB5_KEYTAB}")
      fi
      if [[ -n "${SPARK_PYTHON_ARCHIVE:-}" ]]; then
        extra+=(--archives "${SPARK_PYTHON_ARCHIVE}#environment"
                --conf spark.pyspark.python=./environment/bin/python
                --conf "spark.pyspark.driver.python=${PYSPARK_DRIVER_PYTHON:-python}")
      fi
      ;;
    k8s://*)
      extra+=(--conf "spark.kubernetes.container.image=${JOB_IMAGE:?JOB_IMAGE must name the executor image}"
              --conf "spark.kubernetes.namespace=${POD_NAMESPACE:-default}"
              --conf spark.driver.bindAddress=0.0.0.0
              --conf "spark.driver.host=${POD_IP:?POD_IP must be set (downward API status.podIP)}")
      if [[ -n "${POD_NAME:-}" ]]; then
        extra+=(--conf "spark.kubernetes.driver.pod.name=${POD_NAME}")
      fi
      ;;
  esac
  exec spark-submit "${extra[@]}" "$@"
}

kerberos_login
case "${1:-}" in
  spark-submit) shift; spark_submit "$@" ;;
  cltv) shift; exec cltv "$@" ;;
  ""|-*) exec cltv "$@" ;;
  *) exec "$@" ;;
esac
