# W1 with Fabric (benches/src/bin/fleet_w1.rs runs it as `python fabric_w1.py CONFIG.json`):
# one thread per host, all at once, each a `fabric.Connection` doing the six steps in its own
# directory ROOT/<host>/fabric. Strict host keys: the fleet's known_hosts, unknown keys refused.
# Prints one line per failed host and exits 1 if any failed.
import json
import sys
import threading

import paramiko
from fabric import Config, Connection

cfg = json.load(open(sys.argv[1]))
failures = {}


def w1(address):
    base = f"{cfg['root']}/{address}/fabric"
    release = f"{base}/releases/{cfg['version']}"
    c = Connection(
        address,
        user=cfg["user"],
        port=cfg["port"],
        config=Config(overrides={"load_ssh_configs": False}),
        connect_kwargs={
            "key_filename": cfg["key"],
            "look_for_keys": False,
            "allow_agent": False,
        },
    )
    c.client.load_host_keys(cfg["known_hosts"])
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        c.run(f"mkdir -p {release}", hide=True)
        c.put(cfg["tarball"], f"{release}/app.tar.gz")
        c.run(f"tar -xzf {release}/app.tar.gz -C {release}", hide=True)
        c.run(
            f"ln -sfn -- {release} {base}/current.tmp && mv -fT -- {base}/current.tmp {base}/current",
            hide=True,
        )
        c.run("true", hide=True)
        c.run(f"test -f {base}/current/VERSION", hide=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported per host
        failures[address] = f"{type(e).__name__}: {e}"
    finally:
        c.close()


threads = [threading.Thread(target=w1, args=(h,)) for h in cfg["hosts"]]
for t in threads:
    t.start()
for t in threads:
    t.join()
for address, why in sorted(failures.items()):
    print(f"{address}: {why}")
sys.exit(1 if failures else 0)
