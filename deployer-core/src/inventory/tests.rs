use super::*;

#[test]
fn group_vars_apply_all_then_parents_then_children_then_the_host() {
    let inv = Inventory::from_ini_str(
        "[all:vars]\nx=all\ny=all\nz=all\nw=all\n\
         [region:children]\nweb\n[region:vars]\nx=region\ny=region\nz=region\n\
         [web]\nweb1 z=host\nweb2\n[web:vars]\nx=web\ny=web\n\
         [zz]\nweb1\n[zz:vars]\ny=zz\n",
        "hosts",
    )
    .unwrap();
    let v = inv.host_vars("web1");
    assert_eq!(v["w"], "all");
    // zz and region are both top-level (depth 1), web is region's child (depth 2): web beats
    // both, whatever the names.
    assert_eq!(v["x"], "web");
    assert_eq!(v["y"], "web");
    assert_eq!(v["z"], "host", "the host's own vars win");
    assert_eq!(inv.host_groups("web1"), ["all", "region", "zz", "web"]);
    let v = inv.host_vars("web2");
    assert_eq!(v["z"], "region");
    assert_eq!(inv.host_vars("nobody"), Map::new());
}

#[test]
fn equal_depth_groups_apply_in_name_order() {
    let inv =
        Inventory::from_ini_str("[b]\nh\n[b:vars]\nv=b\n[a]\nh\n[a:vars]\nv=a\n", "hosts").unwrap();
    assert_eq!(inv.host_vars("h")["v"], "b", "b comes after a");
}

#[test]
fn sources_merge_and_the_later_wins() {
    let mut inv = Inventory::from_ini_str("[web]\nweb1 a=1 b=1\n[web:vars]\ng=1\n", "one").unwrap();
    inv.merge(
        Inventory::from_yaml_str(
            "all:\n  children:\n    web:\n      hosts:\n        web1: {b: 2}\n        web2:\n      vars: {g: 2}\n",
            "two.yaml",
        )
        .unwrap(),
    );
    assert_eq!(inv.select("web").unwrap(), ["web1", "web2"]);
    let v = inv.host_vars("web1");
    assert_eq!(
        (v["a"].clone(), v["b"].clone(), v["g"].clone()),
        (1.into(), 2.into(), 2.into())
    );
}

#[test]
fn load_picks_the_format_by_extension_and_runs_executables() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("hosts");
    std::fs::write(&ini, "[web]\nweb1\n").unwrap();
    let yaml = dir.path().join("more.yml");
    std::fs::write(&yaml, "all:\n  hosts:\n    db1:\n").unwrap();
    let json = dir.path().join("static.json");
    std::fs::write(&json, r#"{"cache": ["c1"]}"#).unwrap();
    assert_eq!(
        Inventory::load(&ini).unwrap().select("all").unwrap(),
        ["web1"]
    );
    assert_eq!(
        Inventory::load(&yaml).unwrap().select("all").unwrap(),
        ["db1"]
    );
    assert_eq!(
        Inventory::load(&json).unwrap().select("cache").unwrap(),
        ["c1"]
    );
    // A directory: every file in name order.
    assert_eq!(
        Inventory::load(dir.path()).unwrap().select("all").unwrap(),
        ["web1", "db1", "c1"]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.path().join("dynamic.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = --list ] || exit 9\necho '{\"app\": {\"hosts\": [\"a1\"]}}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            Inventory::load(&script).unwrap().select("app").unwrap(),
            ["a1"]
        );
        let failing = dir.path().join("failing");
        std::fs::write(
            &failing,
            "#!/bin/sh\necho 'no cloud credentials' >&2\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = Inventory::load(&failing).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "inventory script {} --list: exited with status 3; stderr:\nno cloud credentials",
                failing.display()
            )
        );
        // A command line.
        let line = format!("sh {}", script.display());
        assert_eq!(
            Inventory::load(&line).unwrap().select("all").unwrap(),
            ["a1"]
        );
    }
    let err = Inventory::load(dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read inventory "), "{err}");
}
