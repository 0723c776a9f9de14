//! Container, snapshot and task lifecycle on containerd for one instance.
//! Every object is labelled with rouse's ids so a restarted node can find
//! and adopt what it runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use prost_types::Any;
use tonic::Code;

use super::ctr::{Ctr, RUNTIME, SNAPSHOTTER};
use super::image::ImageInfo;
use super::{labels, RuntimeError};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A rouse container found in containerd.
#[derive(Debug, Clone)]
pub struct Actual {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// A task's state as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Running { pid: u32 },
    Paused { pid: u32 },
    Stopped { exit: u32 },
    Created,
    Absent,
}

pub struct Tasks {
    ctr: Ctr,
    logs_dir: PathBuf,
    node: u64,
}

fn ignore_not_found(r: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

impl Tasks {
    /// Where instance logs are written.
    pub fn logs_dir(&self) -> &std::path::Path {
        &self.logs_dir
    }

    pub fn new(ctr: Ctr, logs_dir: PathBuf, node: u64) -> Self {
        Tasks {
            ctr,
            logs_dir,
            node,
        }
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir.join(format!("{id}.log"))
    }

    /// Rouse containers of this node.
    pub async fn list(&self) -> Result<Vec<Actual>, RuntimeError> {
        let filter = format!("labels.\"{}\"=={}", labels::NODE, self.node);
        let req = ListContainersRequest {
            filters: vec![filter],
        };
        let r = self
            .ctr
            .containers()
            .list(self.ctr.req(req, None))
            .await
            .map_err(|s| RuntimeError::containerd("list containers", s))?;
        Ok(r.into_inner()
            .containers
            .into_iter()
            .map(|c| Actual {
                id: c.id,
                labels: c.labels,
            })
            .collect())
    }

    /// Creates the instance's writable snapshot (on `parent`: the image's
    /// top snapshot, or its user namespace copy) and container record.
    pub async fn create(
        &self,
        id: &str,
        image: &ImageInfo,
        parent: &str,
        spec: &oci_spec::runtime::Spec,
        container_labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let req = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_string(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        match self.ctr.snapshots().prepare(self.ctr.req(req, None)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(RuntimeError::containerd("prepare instance snapshot", s)),
        }
        let spec_json = serde_json::to_vec(spec).map_err(|e| RuntimeError::Spec(e.to_string()))?;
        let container = Container {
            id: id.to_string(),
            labels: container_labels,
            image: image.name.clone(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        match self
            .ctr
            .containers()
            .create(self.ctr.req(
                CreateContainerRequest {
                    container: Some(container),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(RuntimeError::containerd("create container", s)),
        }
    }

    /// Creates the task (its process exists, in its namespaces, but runs
    /// nothing yet); stdout and stderr go to the log file. Returns its pid.
    pub async fn create_task(&self, id: &str) -> Result<u32, RuntimeError> {
        let mounts = self
            .ctr
            .snapshots()
            .mounts(self.ctr.req(
                MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| RuntimeError::containerd("snapshot mounts", s))?
            .into_inner()
            .mounts;
        std::fs::create_dir_all(&self.logs_dir)?;
        let log = format!("file://{}", self.log_path(id).display());
        let req = CreateTaskRequest {
            container_id: id.to_string(),
            rootfs: mounts,
            stdout: log.clone(),
            stderr: log,
            terminal: false,
            ..Default::default()
        };
        match self.ctr.tasks().create(self.ctr.req(req, None)).await {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => Err(RuntimeError::containerd("create task", s)),
        }
    }

    /// Starts a created task.
    pub async fn start_task(&self, id: &str) -> Result<(), RuntimeError> {
        self.ctr
            .tasks()
            .start(self.ctr.req(
                StartRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(|s| RuntimeError::containerd("start task", s))?;
        Ok(())
    }

    pub async fn state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        let req = GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        match self.ctr.tasks().get(self.ctr.req(req, None)).await {
            Ok(r) => {
                let Some(p) = r.into_inner().process else {
                    return Ok(TaskState::Absent);
                };
                Ok(
                    match TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown) {
                        TaskStatus::Running | TaskStatus::Pausing => {
                            TaskState::Running { pid: p.pid }
                        }
                        TaskStatus::Paused => TaskState::Paused { pid: p.pid },
                        TaskStatus::Stopped => TaskState::Stopped {
                            exit: p.exit_status,
                        },
                        TaskStatus::Created | TaskStatus::Unknown => TaskState::Created,
                    },
                )
            }
            Err(s) if s.code() == Code::NotFound => Ok(TaskState::Absent),
            Err(s) => Err(RuntimeError::containerd("get task", s)),
        }
    }

    /// Blocks until the task exits; returns its exit status.
    pub async fn wait(&self, id: &str) -> Result<u32, RuntimeError> {
        let req = WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        let r = self
            .ctr
            .tasks()
            .wait(self.ctr.req(req, None))
            .await
            .map_err(|s| RuntimeError::containerd("wait task", s))?;
        Ok(r.into_inner().exit_status)
    }

    pub async fn kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError> {
        let req = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal,
            all: true,
        };
        ignore_not_found(
            self.ctr
                .tasks()
                .kill(self.ctr.req(req, None))
                .await
                .map(|_| ())
                .map_err(|s| RuntimeError::containerd("kill task", s)),
        )
    }

    pub async fn delete_task(&self, id: &str) -> Result<(), RuntimeError> {
        let req = DeleteTaskRequest {
            container_id: id.to_string(),
        };
        ignore_not_found(
            self.ctr
                .tasks()
                .delete(self.ctr.req(req, None))
                .await
                .map(|_| ())
                .map_err(|s| RuntimeError::containerd("delete task", s)),
        )
    }

    /// Freezes the task (cgroup freezer); its memory is kept.
    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let req = containerd_client::services::v1::PauseTaskRequest {
            container_id: id.to_string(),
        };
        self.ctr
            .tasks()
            .pause(self.ctr.req(req, None))
            .await
            .map(|_| ())
            .map_err(|s| RuntimeError::containerd("pause task", s))
    }

    /// Thaws a paused task.
    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let req = containerd_client::services::v1::ResumeTaskRequest {
            container_id: id.to_string(),
        };
        self.ctr
            .tasks()
            .resume(self.ctr.req(req, None))
            .await
            .map(|_| ())
            .map_err(|s| RuntimeError::containerd("resume task", s))
    }

    /// SIGTERM, then SIGKILL after `grace`, then deletes the task.
    pub async fn stop_task(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        if matches!(self.state(id).await?, TaskState::Paused { .. }) {
            // A frozen task cannot handle SIGTERM; thaw it first.
            let _ = self.resume(id).await;
        }
        if matches!(
            self.state(id).await?,
            TaskState::Running { .. } | TaskState::Paused { .. }
        ) {
            self.kill(id, 15).await?;
            let waited = tokio::time::timeout(grace, self.wait(id)).await;
            if waited.is_err() {
                tracing::info!(instance = id, "did not stop within {grace:?}; killing");
                self.kill(id, 9).await?;
                let _ = tokio::time::timeout(Duration::from_secs(5), self.wait(id)).await;
            }
        }
        self.delete_task(id).await
    }

    /// Stops the task and removes container and snapshot.
    pub async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.stop_task(id, grace).await?;
        ignore_not_found(
            self.ctr
                .containers()
                .delete(
                    self.ctr
                        .req(DeleteContainerRequest { id: id.to_string() }, None),
                )
                .await
                .map(|_| ())
                .map_err(|s| RuntimeError::containerd("delete container", s)),
        )?;
        ignore_not_found(
            self.ctr
                .snapshots()
                .remove(self.ctr.req(
                    RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: id.to_string(),
                    },
                    None,
                ))
                .await
                .map(|_| ())
                .map_err(|s| RuntimeError::containerd("remove snapshot", s)),
        )?;
        Ok(())
    }

    /// Whether the kernel OOM-killed a process of the instance (cgroup v1).
    pub fn oom_killed(id: &str) -> bool {
        let p = format!(
            "/sys/fs/cgroup/memory/{}/{id}/memory.oom_control",
            super::spec::CGROUP_PARENT
        );
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|n| n > 0)
    }
}
