"""The SnapshotGroupRestore plan (`restore_plan.select` and `build`) and the PostgreSQL preparation
(`hooks.restore_prep`), on a bleater-like source namespace held in memory (no cluster)."""

from __future__ import annotations

import base64
import contextlib
import io
from typing import Any

import pytest

from snapgroup.api.labels import (
    FREEZE_DEADLINE,
    ISOLATED_BY,
    ORIGINAL_REPLICAS,
    PG_BACKUP_LABEL,
    PG_BACKUP_WAL,
    PG_BACKUP_WAL_START,
    PG_TABLESPACE_MAP,
    shortened,
)
from snapgroup.api.restore import RESTORE_LABEL, RESTORE_UID_LABEL, SnapshotGroupRestoreSpec
from snapgroup.hooks.restore_prep import PREPARATION_MOUNT, Preparation, prepare_restore
from snapgroup.orchestration.restore_plan import RestorePlan, Selection, build, select
from snapgroup.ports import PlanError
from unit.restore_world import (
    BACKUP_LABEL,
    CLAIMS,
    DRIVER,
    GROUP,
    HANDLES,
    IMAGE,
    JSON,
    PG_ANNOTATIONS,
    PG_MOUNT,
    PGDATA,
    REF,
    REFUSALS,
    RESTORE_UID,
    SOURCE,
    STORAGE_CLASS,
    TARGET,
    WAL,
    WAL_START,
    Objects,
    bleater,
    claim,
    content,
    content_name,
    put,
    secret,
    secret_env,
    service,
    snapshot,
    snapshot_name,
    source_world,
    unb64,
    workload,
)


def restore_spec(**fields: Any) -> SnapshotGroupRestoreSpec:
    return SnapshotGroupRestoreSpec.model_validate({"groupName": GROUP, "targetNamespace": TARGET, **fields})


def selection(objects: Objects, **fields: Any) -> Selection:
    return select(REF, restore_spec(**fields), source_world(objects, fields.get("targetNamespace", TARGET)))


def plan(objects: Objects, **fields: Any) -> RestorePlan:
    """select then build, reading Secrets and ConfigMaps as the Restorer does."""
    world = source_world(objects, fields.get("targetNamespace", TARGET))
    chosen = select(REF, restore_spec(**fields), world)
    return build(REF, chosen,
                 {n: objects.get(("Secret", SOURCE, n)) for n in chosen.secrets},
                 {n: objects.get(("ConfigMap", SOURCE, n)) for n in chosen.config_maps},
                 world.snapshots, prepare_restore, IMAGE)


def names(bodies: list[JSON]) -> list[str]:
    return [b["metadata"]["name"] for b in bodies]


def one(bodies: list[JSON], kind: str, name: str) -> JSON:
    return next(b for b in bodies if b["kind"] == kind and b["metadata"]["name"] == name)


def volume_of(chosen: Selection | RestorePlan, service_name: str) -> Any:
    return next(v for v in chosen.volumes if v.service == service_name)


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [r for r in REFUSALS if r.stage in ("select", "build")],
                         ids=lambda r: r.id)
def test_plan_refuses_with_reason_and_field(refusal: Any) -> None:
    objects = bleater(PG_ANNOTATIONS)
    fields = refusal.change(objects)
    with pytest.raises(PlanError) as raised:
        plan(objects, **fields)
    assert (raised.value.reason, raised.value.field_path) == (refusal.reason, refusal.field_path)
    assert raised.value.message


def test_refusal_for_a_foreign_claim_names_the_workload_and_the_claim() -> None:
    objects = bleater()
    next(r for r in REFUSALS if r.reason == "ClaimNotInGroup").change(objects)
    with pytest.raises(PlanError, match="Deployment/postgres also mounts postgres-wal"):
        selection(objects)


def test_a_target_namespace_starting_with_kube_is_a_system_namespace() -> None:
    objects = bleater()
    with pytest.raises(PlanError) as raised:
        selection(objects, targetNamespace="kube-flannel")
    assert raised.value.reason == "TargetNamespaceForbidden"


def test_an_included_writer_on_an_unsnapshotted_claim_is_refused_too() -> None:
    objects = bleater()
    put(objects, claim("writer-spool"))
    pod = objects[("Deployment", SOURCE, "data-writer")]["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "spool", "persistentVolumeClaim": {"claimName": "writer-spool"}}]
    # Copied, the writer would wait for a claim the clone never gets, until the restore times out.
    with pytest.raises(PlanError) as raised:
        selection(objects, includeWriters=True)
    assert raised.value.reason == "ClaimNotInGroup"


def test_an_optional_secret_that_does_not_exist_is_no_refusal() -> None:
    objects = bleater()
    minio = objects[("Deployment", SOURCE, "minio")]["spec"]["template"]["spec"]["containers"][0]
    extra = secret_env("MINIO_KMS_SECRET_KEY", "minio-kms", "key")
    extra["valueFrom"]["secretKeyRef"]["optional"] = True
    minio["env"].append(extra)
    built = plan(objects)  # the source runs without it: so does the clone
    assert "minio-kms" not in names(built.secrets)


# -- selection --------------------------------------------------------------------------------


def test_the_workloads_on_the_groups_claims_are_chosen_and_writers_left_out_with_a_note() -> None:
    chosen = selection(bleater())
    assert [(w["kind"], w["metadata"]["name"]) for w in chosen.workloads] == [
        ("Deployment", "minio"), ("Deployment", "mongodb"), ("Deployment", "postgres")]
    assert [(v.service, v.snapshot, v.pvc) for v in chosen.volumes] == [
        (s, snapshot_name(s), CLAIMS[s]) for s in ("postgres", "mongodb", "minio")]
    assert chosen.notes == ["writer Deployment/data-writer left out (includeWriters is false)"]
    # The writer's own references are not copied; the servers' and the group's connections are.
    assert chosen.secrets == ["minio-credentials", "minio-tls", "mongodb-credentials", "postgres-credentials"]
    assert chosen.config_maps == []
    assert chosen.earliest_cut is not None and chosen.earliest_cut.startswith("2026-11-27T12:00:01")


def test_include_writers_copies_the_writer_and_what_it_references() -> None:
    chosen = selection(bleater(), includeWriters=True)
    assert "data-writer" in names(chosen.workloads)
    assert chosen.notes == []
    assert chosen.config_maps == ["bleater-endpoints"]


def test_writers_named_by_selector_are_left_out_too() -> None:
    objects = bleater()
    objects[("SnapshotGroup", SOURCE, GROUP)]["spec"]["writers"] = [
        {"kind": "Deployment", "selector": {"matchLabels": {"app": "data-writer"}}}]
    chosen = selection(objects)
    assert "data-writer" not in names(chosen.workloads)
    assert chosen.notes == ["writer Deployment/data-writer left out (includeWriters is false)"]


def test_services_are_the_ones_selecting_the_chosen_workloads_pods() -> None:
    objects = bleater()
    put(objects, service("postgres-headless", port=5432, selector={"app": "postgres"}))
    objects[("Service", SOURCE, "postgres-headless")]["spec"]["clusterIP"] = "None"
    put(objects, service("postgres-metrics", ip="127.96.0.20", port=9187,
                         selector={"app": "postgres", "role": "metrics"}))  # no chosen pod has role
    put(objects, service("data-writer", ip="127.96.0.21", port=8080, selector={"app": "data-writer"}))
    put(objects, service("external-db", ip="127.96.0.22", port=5432))  # no selector: manual endpoints
    legacy = put(objects, service("legacy-db", port=5432, selector={"app": "postgres"},
                                  type_="ExternalName"))
    legacy["spec"]["externalName"] = "db.legacy.example.com"
    assert names(selection(objects).services) == ["minio", "mongodb", "postgres", "postgres-headless"]
    assert "data-writer" in names(selection(objects, includeWriters=True).services)


def _as_statefulset(objects: Objects, name: str, *, replicas: int, snapshotted: int,
                    annotations: dict[str, str] | None = None,
                    snapshot_annotations: dict[str, str] | None = None) -> None:
    """Server `name` as a StatefulSet with a claim template; the group snapshotted `snapshotted`
    of its claims (data-<name>-0, data-<name>-1, ...)."""
    deployment = objects.pop(("Deployment", SOURCE, name))
    objects.pop(("PersistentVolumeClaim", SOURCE, CLAIMS[name]))
    objects.pop(("VolumeSnapshot", SOURCE, snapshot_name(name)))
    objects.pop(("VolumeSnapshotContent", "", content_name(name)))
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if "persistentVolumeClaim" not in v]
    if not pod["volumes"]:
        del pod["volumes"]
    stateful = workload(name, pod["containers"], kind="StatefulSet", replicas=replicas,
                        annotations=annotations, serviceAccountName="default",
                        **({"volumes": pod["volumes"]} if "volumes" in pod else {}))
    stateful["spec"]["serviceName"] = name
    stateful["spec"]["volumeClaimTemplates"] = [{
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Pending"}}]
    put(objects, stateful)
    group = objects[("SnapshotGroup", SOURCE, GROUP)]
    entries = []
    for i in range(snapshotted):
        pvc = f"data-{name}-{i}"
        snap = snapshot(name, snapshot_annotations)
        snap["metadata"]["name"] = f"{GROUP}-{name}-{pvc}"
        snap["status"]["boundVolumeSnapshotContentName"] = f"snapcontent-{name}-{i}"
        body = content(name)
        body["metadata"]["name"] = f"snapcontent-{name}-{i}"
        body["status"]["snapshotHandle"] = f"snapshot-{name}-{i}"
        put(objects, snap)
        put(objects, body)
        put(objects, claim(pvc))
        entries.append({"name": snap["metadata"]["name"], "pvc": pvc})
    next(s for s in group["status"]["services"] if s["name"] == name)["volumeSnapshots"] = entries
    next(s for s in group["spec"]["services"] if s["name"] == name)["pvcs"] = [e["pvc"] for e in entries]


def test_a_statefulset_is_chosen_through_its_claim_template_claims() -> None:
    objects = bleater()
    _as_statefulset(objects, "mongodb", replicas=2, snapshotted=2)
    chosen = selection(objects)
    assert ("StatefulSet", "mongodb") in [(w["kind"], w["metadata"]["name"]) for w in chosen.workloads]
    mongo = [v for v in chosen.volumes if v.service == "mongodb"]
    assert [v.pvc for v in mongo] == ["data-mongodb-0", "data-mongodb-1"]
    assert [v.content_copy["spec"]["source"]["snapshotHandle"] for v in mongo] == [
        "snapshot-mongodb-0", "snapshot-mongodb-1"]


def test_a_statefulset_with_a_replica_the_group_did_not_snapshot_is_refused() -> None:
    objects = bleater()
    _as_statefulset(objects, "mongodb", replicas=3, snapshotted=2)
    with pytest.raises(PlanError, match="data-mongodb-2") as raised:
        selection(objects)
    assert raised.value.reason == "ClaimNotInGroup"


def test_an_isolated_statefulset_counts_the_replicas_it_will_get_back() -> None:
    objects = bleater()
    # Held at zero by another group right now: its claims are those of its two replicas.
    _as_statefulset(objects, "mongodb", replicas=0, snapshotted=2,
                    annotations={ORIGINAL_REPLICAS: "2", ISOLATED_BY: "bleater/other/uid-x"})
    assert ("StatefulSet", "mongodb") in [(w["kind"], w["metadata"]["name"])
                                          for w in selection(objects).workloads]


# -- what is built from the snapshots (select) ---------------------------------------------------


def test_the_content_copy_retains_the_groups_snapshot_and_names_the_copy_in_the_target() -> None:
    chosen = selection(bleater())
    for service_name in CLAIMS:
        volume = volume_of(chosen, service_name)
        content_copy, snapshot_copy = volume.content_copy, volume.snapshot_copy
        assert content_copy["spec"]["deletionPolicy"] == "Retain"
        assert content_copy["spec"]["driver"] == DRIVER
        assert content_copy["spec"]["source"] == {"snapshotHandle": HANDLES[service_name]}
        assert content_copy["spec"]["volumeSnapshotRef"] == {
            "namespace": TARGET, "name": snapshot_copy["metadata"]["name"]}
        assert snapshot_copy["spec"] == {
            "source": {"volumeSnapshotContentName": content_copy["metadata"]["name"]}}
        # Neither copy may take the name of the group's own objects.
        assert content_copy["metadata"]["name"] != content_name(service_name)
        assert snapshot_copy["metadata"]["name"] != snapshot_name(service_name)
        for body in (content_copy, snapshot_copy):
            assert body["metadata"]["labels"][RESTORE_UID_LABEL] == RESTORE_UID


def test_the_claim_keeps_its_name_class_and_modes_and_restores_from_the_copy() -> None:
    volume = volume_of(selection(bleater()), "postgres")
    body = volume.claim
    assert body["metadata"]["name"] == "postgres-data"
    assert body["metadata"]["labels"][RESTORE_UID_LABEL] == RESTORE_UID
    assert body["metadata"]["labels"]["app"] == "postgres"
    assert body["spec"]["storageClassName"] == STORAGE_CLASS
    assert body["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert body["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                          "name": volume.snapshot_copy["metadata"]["name"]}
    assert "volumeName" not in body["spec"] and "status" not in body
    assert "annotations" not in body["metadata"]


@pytest.mark.parametrize(("request_size", "restore_size", "expected"), [
    ("1Gi", "2Gi", "2Gi"),
    ("5Gi", "2Gi", "5Gi"),
    ("1Gi", "1073741824", "1Gi"),
    ("500M", "1Gi", "1Gi"),
    ("2G", "1Gi", "2G"),
])
def test_the_claim_is_as_large_as_the_larger_of_its_request_and_the_restore_size(
        request_size: str, restore_size: str, expected: str) -> None:
    objects = bleater()
    put(objects, claim("postgres-data", request_size))
    objects[("VolumeSnapshot", SOURCE, snapshot_name("postgres"))]["status"]["restoreSize"] = restore_size
    claim_body = volume_of(selection(objects), "postgres").claim
    assert claim_body["spec"]["resources"] == {"requests": {"storage": expected}}


def test_a_claim_gone_from_the_source_takes_the_drivers_default_class_and_the_snapshots_size() -> None:
    objects = bleater()
    del objects[("PersistentVolumeClaim", SOURCE, "postgres-data")]
    objects[("VolumeSnapshot", SOURCE, snapshot_name("postgres"))]["status"]["restoreSize"] = "3Gi"
    for name, provisioner, default in (("aaa-other-driver", "ebs.csi.aws.com", "true"),
                                       ("aab-hostpath-slow", DRIVER, "false")):
        put(objects, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "provisioner": provisioner,
                      "metadata": {"name": name, "annotations": {
                          "storageclass.kubernetes.io/is-default-class": default}}})
    spec = volume_of(selection(objects), "postgres").claim["spec"]
    assert spec["storageClassName"] == STORAGE_CLASS
    assert spec["resources"] == {"requests": {"storage": "3Gi"}}


def test_a_claim_gone_from_the_source_with_no_class_for_the_driver_is_refused() -> None:
    objects = bleater()
    del objects[("PersistentVolumeClaim", SOURCE, "postgres-data")]
    del objects[("StorageClass", "", STORAGE_CLASS)]
    with pytest.raises(PlanError) as raised:
        selection(objects)
    assert (raised.value.reason, raised.value.field_path) == ("StorageClassNotFound", "spec.groupName")


# -- what is built (build) ------------------------------------------------------------------------


def test_build_copies_the_chosen_workloads_services_secrets_in_order() -> None:
    built = plan(bleater())
    assert names(built.workloads) == ["minio", "mongodb", "postgres"]
    assert names(built.services) == ["minio", "mongodb", "postgres"]
    assert names(built.secrets) == ["minio-credentials", "minio-tls", "mongodb-credentials",
                                    "postgres-credentials"]
    assert built.config_maps == []


@pytest.mark.parametrize("source", [
    service("postgres", ip="127.96.0.10", port=5432, selector={"app": "postgres"}),
    service("postgres", ip="127.96.0.10", port=5432, selector={"app": "postgres"},
            type_="NodePort", node_port=30432),
    service("postgres", ip="127.96.0.10", port=5432, selector={"app": "postgres"},
            type_="LoadBalancer", node_port=31432),
], ids=["ClusterIP", "NodePort", "LoadBalancer"])
def test_cloned_services_stay_inside_the_cluster_with_a_fresh_ip(source: JSON) -> None:
    objects = bleater()
    put(objects, source)
    body = one(plan(objects).services, "Service", "postgres")
    spec = body["spec"]
    assert spec["type"] == "ClusterIP"
    assert "clusterIP" not in spec and "clusterIPs" not in spec
    assert spec["selector"] == {"app": "postgres"}
    assert spec["ports"] == [{"name": "postgres", "port": 5432, "targetPort": "postgres", "protocol": "TCP"}]
    assert not {"externalTrafficPolicy", "loadBalancerIP", "healthCheckNodePort"} & set(spec)
    assert body["metadata"]["labels"][RESTORE_UID_LABEL] == RESTORE_UID
    assert set(body["metadata"]) == {"name", "labels"}


def test_a_headless_service_stays_headless() -> None:
    objects = bleater()
    headless = put(objects, service("postgres-pods", port=5432, selector={"app": "postgres"}))
    headless["spec"].update(clusterIP="None", clusterIPs=["None"], publishNotReadyAddresses=True)
    spec = one(plan(objects).services, "Service", "postgres-pods")["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert "clusterIPs" not in spec


def test_every_planned_object_carries_the_restore_labels() -> None:
    built = plan(bleater(PG_ANNOTATIONS), includeWriters=True)
    bodies = [*(v.content_copy for v in built.volumes), *(v.snapshot_copy for v in built.volumes),
              *(v.claim for v in built.volumes), *built.services, *built.secrets, *built.config_maps,
              *built.workloads]
    assert len(bodies) == 3 * 3 + 3 + 5 + 1 + 4  # secrets: 4 copied + the PostgreSQL preparation
    for body in bodies:
        labels = body["metadata"]["labels"]
        assert labels[RESTORE_UID_LABEL] == RESTORE_UID, body["metadata"]["name"]
        assert labels[RESTORE_LABEL] == f"{SOURCE}.{REF.name}"
    created = built.created()
    assert [k for k, _ in created].count("PersistentVolumeClaim") == 3
    assert len(created) == len(bodies) - 3  # the cluster-scoped content copies are not in the target


def test_secrets_and_config_maps_are_copied_with_their_data_only() -> None:
    objects = bleater()
    built = plan(objects, includeWriters=True)
    for kind, name in (("Secret", "postgres-credentials"), ("Secret", "minio-tls"),
                       ("ConfigMap", "bleater-endpoints")):
        body, source = one([*built.secrets, *built.config_maps], kind, name), objects[(kind, SOURCE, name)]
        assert body["data"] == source["data"]
        assert set(body["metadata"]) == {"name", "labels"}
        assert body.get("type") == source.get("type")


def test_an_isolated_workload_is_copied_with_its_original_replicas_and_no_operator_annotations() -> None:
    objects = bleater()
    pg = objects[("Deployment", SOURCE, "postgres")]
    pg["spec"]["replicas"] = 0
    pg["metadata"]["annotations"] |= {ORIGINAL_REPLICAS: "1", ISOLATED_BY: "bleater/other/uid-x",
                                      FREEZE_DEADLINE: "2026-11-28T08:01:00Z", "team": "storage"}
    body = one(plan(objects).workloads, "Deployment", "postgres")
    assert body["spec"]["replicas"] == 1
    assert body["metadata"]["annotations"] == {"team": "storage"}
    assert "status" not in body and set(body["metadata"]) == {"name", "labels", "annotations"}


def test_the_service_account_is_dropped_with_a_note() -> None:
    built = plan(bleater(), includeWriters=True)
    pod = one(built.workloads, "Deployment", "data-writer")["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and "serviceAccount" not in pod
    assert [n for n in built.notes if "data-writer" in n] == [
        "Deployment/data-writer runs as the target namespace's default ServiceAccount, not data-writer: "
        "a restore copies no identities or permissions"]


# -- PostgreSQL preparation ---------------------------------------------------------------------


def pg_container(pgdata: str | None = PGDATA) -> JSON:
    env: list[JSON] = [secret_env("POSTGRES_USER", "postgres-credentials", "username")]
    if pgdata is not None:
        env.append({"name": "PGDATA", "value": pgdata})
    return {"name": "postgres", "image": "postgres:15", "env": env}


def test_prepare_restore_hands_the_backup_label_and_wal_to_the_init_step() -> None:
    outcome = prepare_restore("postgresql", PG_ANNOTATIONS, pg_container(), PG_MOUNT)
    assert isinstance(outcome, Preparation)
    assert outcome.args == ["prepare-pgdata", "--pgdata", PGDATA, "--from", PREPARATION_MOUNT]
    assert set(outcome.files) == {"backup_label", "backup-wal", "backup-wal-start"}
    assert unb64(outcome.files["backup_label"]) == BACKUP_LABEL
    assert outcome.files["backup-wal"] == WAL  # kept as base64 of the gzip: the file is the gzip
    assert base64.b64decode(outcome.files["backup-wal"])[:2] == b"\x1f\x8b"
    assert unb64(outcome.files["backup-wal-start"]) == WAL_START
    assert outcome.summary.startswith("backup recovery")


def test_prepare_restore_carries_a_tablespace_map() -> None:
    annotations = {**PG_ANNOTATIONS, PG_TABLESPACE_MAP: "16400 /mnt/tablespaces/archive\n"}
    outcome = prepare_restore("postgresql", annotations, pg_container(), PG_MOUNT)
    assert isinstance(outcome, Preparation)
    assert unb64(outcome.files["tablespace_map"]) == "16400 /mnt/tablespaces/archive\n"


@pytest.mark.parametrize("missing", [PG_BACKUP_LABEL, PG_BACKUP_WAL, PG_BACKUP_WAL_START])
def test_prepare_restore_falls_back_to_crash_recovery_without_all_three_annotations(missing: str) -> None:
    annotations = {k: v for k, v in PG_ANNOTATIONS.items() if k != missing}
    outcome = prepare_restore("postgresql", annotations, pg_container(), PG_MOUNT)
    assert isinstance(outcome, str) and outcome.startswith("crash recovery")


@pytest.mark.parametrize(("pgdata", "mount", "expected"), [
    (None, PG_MOUNT, PG_MOUNT),  # the image's default PGDATA is the mount itself
    (PGDATA, PG_MOUNT, PGDATA),
    ("/var/lib/postgresql/data/", PG_MOUNT + "/", PG_MOUNT),
    ("/var/lib/postgresql/data2", PG_MOUNT, None),  # a sibling, not below the mount
    ("/pgdata", PG_MOUNT, None),
])
def test_prepare_restore_needs_pgdata_on_the_restored_claim(
        pgdata: str | None, mount: str, expected: str | None) -> None:
    outcome = prepare_restore("postgresql", PG_ANNOTATIONS, pg_container(pgdata), mount)
    if expected is None:
        assert isinstance(outcome, str)
        assert outcome == "crash recovery: PGDATA of container postgres is not on the restored claim"
    else:
        assert isinstance(outcome, Preparation) and outcome.args[2] == expected


@pytest.mark.parametrize("service_type", ["mongodb", "minio"])
def test_prepare_restore_has_nothing_to_do_for_other_servers(service_type: str) -> None:
    outcome = prepare_restore(service_type, PG_ANNOTATIONS, pg_container(), "/data")
    assert outcome == "starts as it was cut; nothing to prepare"


def test_the_init_step_runs_a_command_the_operator_image_has() -> None:
    from snapgroup.cli import parser  # the image's ENTRYPOINT is `snapgroup`, the init step gives args

    outcome = prepare_restore("postgresql", PG_ANNOTATIONS, pg_container(), PG_MOUNT)
    assert isinstance(outcome, Preparation)
    errors = io.StringIO()
    parsed = None
    with contextlib.redirect_stderr(errors), contextlib.suppress(SystemExit):
        parsed = parser().parse_args(outcome.args)
    assert parsed is not None, errors.getvalue()


def test_the_postgres_workload_gets_an_init_step_writing_the_backup_into_pgdata() -> None:
    objects = bleater(PG_ANNOTATIONS)
    source_pod = objects[("Deployment", SOURCE, "postgres")]["spec"]["template"]["spec"]
    source_container = source_pod["containers"][0]
    built = plan(objects)
    pod = one(built.workloads, "Deployment", "postgres")["spec"]["template"]["spec"]
    (step,) = pod["initContainers"]
    prep_secret = f"snapgroup-restore-{RESTORE_UID[:8]}-postgres"
    assert step["name"] == "snapgroup-prepare"
    assert step["image"] == IMAGE
    assert step["args"] == ["prepare-pgdata", "--pgdata", PGDATA, "--from", PREPARATION_MOUNT]
    assert step["volumeMounts"] == [
        {"name": "data", "mountPath": PG_MOUNT},
        {"name": "snapgroup-restore", "mountPath": PREPARATION_MOUNT, "readOnly": True}]
    assert step["securityContext"] == source_container["securityContext"]
    assert {"name": "snapgroup-restore", "secret": {"secretName": prep_secret, "defaultMode": 0o444}} in (
        pod["volumes"])
    assert pod["containers"] == [source_container]  # the server itself is as it was
    files = one(built.secrets, "Secret", prep_secret)
    assert files["type"] == "Opaque"
    assert files["metadata"]["labels"][RESTORE_UID_LABEL] == RESTORE_UID
    assert unb64(files["data"]["backup_label"]) == BACKUP_LABEL
    assert files["data"]["backup-wal"] == WAL
    assert built.preparations["Deployment/postgres"].startswith("backup recovery")
    for other in ("mongodb", "minio"):
        assert "initContainers" not in one(built.workloads, "Deployment", other)["spec"]["template"]["spec"]


def test_without_the_wal_postgres_starts_by_crash_recovery_and_gets_no_init_step() -> None:
    objects = bleater({k: v for k, v in PG_ANNOTATIONS.items() if k != PG_BACKUP_WAL})
    built = plan(objects)
    pod = one(built.workloads, "Deployment", "postgres")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert all(v["name"] != "snapgroup-restore" for v in pod["volumes"])
    assert not [s for s in names(built.secrets) if s.startswith("snapgroup-restore-")]
    assert built.preparations["Deployment/postgres"].startswith("crash recovery")
    assert "WAL" in built.preparations["Deployment/postgres"]


def test_pgdata_outside_the_restored_claim_means_crash_recovery() -> None:
    objects = bleater(PG_ANNOTATIONS)
    env = objects[("Deployment", SOURCE, "postgres")]["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "PGDATA")["value"] = "/pgdata"
    built = plan(objects)
    assert "initContainers" not in one(built.workloads, "Deployment", "postgres")["spec"]["template"]["spec"]
    assert built.preparations["Deployment/postgres"] == (
        "crash recovery: PGDATA of container postgres is not on the restored claim")


def test_a_postgres_statefulset_gets_its_init_step_on_the_claim_template_volume() -> None:
    objects = bleater(PG_ANNOTATIONS)
    _as_statefulset(objects, "postgres", replicas=1, snapshotted=1, snapshot_annotations=PG_ANNOTATIONS)
    built = plan(objects)
    pod = one(built.workloads, "StatefulSet", "postgres")["spec"]["template"]["spec"]
    (step,) = pod["initContainers"]
    assert step["volumeMounts"][0] == {"name": "data", "mountPath": PG_MOUNT}
    assert built.preparations["StatefulSet/postgres"].startswith("backup recovery")


def test_a_postgres_statefulset_with_two_replicas_starts_by_crash_recovery_with_a_valid_template() -> None:
    objects = bleater(PG_ANNOTATIONS)
    _as_statefulset(objects, "postgres", replicas=2, snapshotted=2, snapshot_annotations=PG_ANNOTATIONS)
    built = plan(objects)
    pod = one(built.workloads, "StatefulSet", "postgres")["spec"]["template"]["spec"]
    # One template serves both replicas and each claim holds its own backup: no init step can
    # carry both labels, and the API server refuses two volumes or init containers of one name.
    assert "initContainers" not in pod
    assert all(v["name"] != "snapgroup-restore" for v in pod.get("volumes") or [])
    assert not [s for s in names(built.secrets) if s.startswith("snapgroup-restore-")]
    assert built.preparations["StatefulSet/postgres"].startswith("crash recovery: its 2 restored claims")


@pytest.mark.parametrize("limit", [63, 253])
def test_names_too_long_for_the_api_are_cut_with_a_hash_and_stay_distinct(limit: int) -> None:
    long = "s" * (limit - 9) + "-" + "x" * 20  # a cut here would end in '-'
    cut = shortened(long, limit)
    assert len(cut) <= limit and cut[-1].isalnum() and cut[0] == "s"
    assert cut != shortened(long + "y", limit)
    assert shortened("postgres-data", limit) == "postgres-data"


def test_secrets_named_by_volume_types_are_copied_too() -> None:
    objects = bleater()
    put(objects, secret("csi-publish", {"token": "t"}))
    pod = objects[("Deployment", SOURCE, "minio")]["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "vault", "csi": {"driver": "secrets.example", "nodePublishSecretRef":
                                                     {"name": "csi-publish"}}})
    assert "csi-publish" in names(plan(objects).secrets)


def test_copied_pods_get_no_token_of_the_targets_default_service_account_unless_they_asked() -> None:
    objects = bleater()
    minio = objects[("Deployment", SOURCE, "minio")]["spec"]["template"]["spec"]
    minio["automountServiceAccountToken"] = True
    built = plan(objects)
    tokens = {w["metadata"]["name"]: w["spec"]["template"]["spec"]["automountServiceAccountToken"]
              for w in built.workloads}
    assert tokens == {"minio": True, "mongodb": False, "postgres": False}
