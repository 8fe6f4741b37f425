"""Tooling for the Argo Workflows manifests in argo/: schema and lint (`manifests`), a local run of a
template's DAG (`local`), submission to an Argo Server (`server`), and the `cltv-argo` command (`cli`).

It sits beside the job package, not in it: the zip shipped to Spark executors carries spark_app only.
"""
