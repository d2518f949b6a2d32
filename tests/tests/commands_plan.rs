//! The standard commands through the whole pipeline: a tasklist in the original deployer's
//! format is validated (the dry run) and run by the `Executor` on `LocalHost`.

use std::path::Path;
use std::sync::Arc;

use deployer_core::{Executor, Plan, Tasklist};
use deployer_remote::LocalConnector;
use deployer_tests::{registry, s};
use serde_json::json;

#[test]
fn a_tasklist_with_the_original_deployers_arguments_passes_the_dry_run() {
    let tasklist = json!({"name": "original", "stages": [
        {"name": "Stop", "concurrency": 2, "concurrency_per_host": 1, "tasks": [
            [{"command": "uplaod", "source": "a", "destination": "/b"}]
        ]}
    ]});
    // A misspelt command is reported with a hint...
    let t = Tasklist::from_value(&tasklist).unwrap();
    let err = Plan::build(&t, &registry()).unwrap_err().to_string();
    assert!(err.contains("unknown command \"uplaod\""), "{err}");
    assert!(err.contains("did you mean \"upload\"?"), "{err}");

    // ...and the original arguments load unchanged.
    let tasklist = json!({"name": "Deploy web 1.2", "stages": [
        {"name": "Upload", "concurrency": 10, "concurrency_per_host": 2, "tasks": [
            {"command": "upload", "remote_host": "fe001", "tag": "web", "source": "/tmp/web_1.2.tar.gz", "destination": "/tmp/"},
            {"command": "createdirectory", "remote_host": "fe001", "source": "/opt/web_1.2", "clobber": true}
        ]},
        {"name": "Deploy", "concurrency": 5, "concurrency_per_host": 1, "tasks": [[
            {"command": "unpack", "remote_host": "fe001", "source": "/tmp/web_1.2.tar.gz", "destination": "/opt/web_1.2"},
            {"command": "stop_service", "remote_host": "fe001", "timeout": 60,
             "stop_command": "svc -d /etc/service/web", "status_command": "svstat /etc/service/web",
             "check_command": "/opt/web/bin/check", "kill_command": "svc -k /etc/service/web"},
            {"command": "migration_script", "remote_host": "fe001", "source": "/opt/web_1.2/migrate.sh", "if_exists": "/opt/web_1.2/migrate.sh"},
            {"command": "symlink", "remote_host": "fe001", "source": "/opt/web_1.2", "destination": "/opt/web"},
            {"command": "start_service", "remote_host": "fe001", "start_command": "svc -u /etc/service/web", "check_command": "/opt/web/bin/check"},
            {"command": "check_service", "remote_host": "fe001", "check_command": "/opt/web/bin/check", "want_state": 0, "timeout": 30, "notify_interval": 10},
            {"command": "control_service", "remote_host": "fe001", "control_command": "svc -t /etc/service/web", "status_command": "svstat /etc/service/web", "want_state": "up"}
        ]]},
        {"name": "Cleanup", "concurrency": 10, "tasks": [
            {"command": "cleanup", "remote_host": "fe001", "path": "/opt", "filespec": "web_*", "keepversions": 5, "exclude": "*.keep"},
            {"command": "copyfile", "remote_host": "fe001", "source": "/a", "destination": "/b", "remove_if_exists": true},
            {"command": "movefile", "remote_host": "fe001", "source": "/b", "destination": "/c", "clobber": false},
            {"command": "removefile", "remote_host": "fe001", "source": "/tmp/web_1.2.tar.gz"},
            {"command": "writefile", "remote_host": "fe001", "destination": "/opt/web/VERSION", "contents": "1.2", "clobber": true},
            {"command": "getremoteversions", "remote_host": "fe001", "install_location": "/opt"},
            {"command": "send_graphite", "carbon_host": "graphite", "metric_name": "deploy.web", "metric_value": "1.0", "carbon_port": 2003, "continue_on_fail": true}
        ]}
    ]});
    let t = Tasklist::from_value(&tasklist).unwrap();
    let plan = Plan::build(&t, &registry());
    assert!(plan.is_ok(), "{}", plan.unwrap_err());
}

#[tokio::test]
async fn a_release_deploy_runs_through_the_executor() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("web $(app)");
    let package = tmp.path().join("pkg");
    std::fs::create_dir_all(package.join("app")).unwrap();
    std::fs::write(package.join("app/index.html"), "v2").unwrap();
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(tmp.path().join("web_2.tgz"))
        .arg("-C")
        .arg(&package)
        .arg("app")
        .status()
        .unwrap();
    assert!(status.success());
    let archive = tmp.path().join("web_2.tgz");
    let release = root.join("releases/2");
    let r = s(&root);
    let tasklist = json!({"name": "deploy web 2", "stages": [
        {"name": "Lock", "concurrency": 1, "tasks": [
            {"command": "release_lock", "deploy_to": r, "holder": "ci run 7"}
        ]},
        {"name": "Deploy", "concurrency": 2, "tasks": [[
            {"command": "release_create", "deploy_to": r, "version": "2"},
            {"command": "upload", "source": archive, "destination": format!("{}/", s(tmp.path().join("upload").as_path()))},
            {"command": "unpack", "source": archive, "destination": s(&release)},
            {"command": "release_link_shared", "deploy_to": r, "version": "2", "shared_dirs": ["app/log"]},
            {"command": "writefile", "destination": s(&release.join("app/VERSION")), "contents": "2\n"},
            {"command": "release_activate", "deploy_to": r, "version": "2", "holder": "ci run 7"}
        ]]},
        {"name": "Finish", "concurrency": 2, "tasks": [
            {"command": "keep_releases", "deploy_to": r, "keep": 3},
            {"command": "release_unlock", "deploy_to": r, "holder": "ci run 7"}
        ]},
        {"name": "Report", "concurrency": 1, "tasks": [
            {"command": "get_remote_versions", "install_location": s(tmp.path())}
        ]}
    ]});
    std::fs::create_dir_all(tmp.path().join("upload")).unwrap();
    let plan = Plan::build(&Tasklist::from_value(&tasklist).unwrap(), &registry()).unwrap();
    let report = Executor::new(Arc::new(LocalConnector::new()))
        .run(&plan)
        .await;
    assert!(report.succeeded(), "{report:?}");
    // What get_remote_versions found is in the report, for a generator to use.
    let found: Vec<_> = report.data.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        found,
        [json!({"host": "local", "versions": {"web $(app)": "2"}})]
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/app/index.html")).unwrap(),
        "v2"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/app/VERSION")).unwrap(),
        "2\n"
    );
    assert!(root.join("current/app/log").is_symlink());
    assert!(tmp.path().join("upload/web_2.tgz").is_file());
    assert!(!root.join(".deploy.lock").exists());
    assert!(!Path::new(env!("CARGO_MANIFEST_DIR")).join("app").exists());
}

/// A load-balancer backend of the host application's own: records what it was asked.
#[derive(Debug, Default, Clone)]
struct Recorder {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

#[deployer_core::async_trait]
impl deployer_commands::LoadBalancerBackend for Recorder {
    async fn set_state(
        &self,
        ctx: &deployer_core::ExecContext,
        request: &deployer_commands::LbRequest,
    ) -> Result<(), deployer_core::CommandError> {
        self.seen.lock().unwrap().push(format!(
            "{} {} on {} via {} ({:?})",
            request.action.as_str(),
            request.lb_service,
            request.lb_hostname,
            ctx.host().name(),
            request.lb_password
        ));
        Ok(())
    }
}

#[tokio::test]
async fn a_custom_load_balancer_backend_takes_hosts_out_and_back() {
    let recorder = Recorder::default();
    let mut commands = registry();
    deployer_commands::LoadBalancers::new()
        .backend("mine", recorder.clone())
        .register(&mut commands);
    let tasklist = json!({"name": "rolling restart", "stages": [
        {"name": "Restart", "concurrency": 2, "concurrency_per_host": 1, "tasks": [
            [{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "fe001_web", "lb_password": "hunter2"},
             {"command": "execute_command", "command_line": "true"},
             {"command": "enable_loadbalancer", "lb_hostname": "lb1", "lb_service": "fe001_web", "lb_password": "hunter2"}]
        ]}
    ]});
    let plan = Plan::build(&Tasklist::from_value(&tasklist).unwrap(), &commands).unwrap();
    let report = Executor::new(Arc::new(LocalConnector::new()))
        .run(&plan)
        .await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        [
            "disable fe001_web on lb1 via local (Some(Secret(***)))",
            "enable fe001_web on lb1 via local (Some(Secret(***)))",
        ]
    );
}
