"""Stand-ins for clouds that cannot run here: small HTTP servers answering the documented REST calls htex makes.

One module per cloud (gce.py, openstack.py, kube.py), on one base (base.py):
each serves on 127.0.0.1 from a thread of its own, keeps its machines in
memory, and boots or kills them through the test hypervisor
(tests/clouds/hypervisor.py) as the real cloud would start or stop a machine.
The providers talk to them through the clouds' real client libraries.
scenarios.py holds what every cloud is tested for, written once (and the
``hypervisor`` fixture); gated.py a task the scenarios hold until they let it go.
"""
