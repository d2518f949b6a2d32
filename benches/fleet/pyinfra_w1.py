# W1 as a pyinfra deploy (benches/src/bin/fleet_w1.rs runs it as
# `pyinfra --parallel N -y inventory.py pyinfra_w1.py`): per host, in its own directory
# FLEET_ROOT/<host>/pyinfra, the same six steps as the deployer's tasklist.
import os

from pyinfra import host
from pyinfra.operations import files, server

root = os.environ["FLEET_ROOT"]
version = os.environ["FLEET_VERSION"]
tarball = os.environ["FLEET_TARBALL"]
base = f"{root}/{host.name}/pyinfra"
release = f"{base}/releases/{version}"

files.directory(name="create release", path=release, present=True)
files.put(name="upload", src=tarball, dest=f"{release}/app.tar.gz")
server.shell(name="unpack", commands=[f"tar -xzf {release}/app.tar.gz -C {release}"])
server.shell(
    name="switch current",
    commands=[f"ln -sfn -- {release} {base}/current.tmp && mv -fT -- {base}/current.tmp {base}/current"],
)
server.shell(name="restart", commands=["true"])
server.shell(name="verify", commands=[f"test -f {base}/current/VERSION"])
