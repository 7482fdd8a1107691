"""``edgexfer deploy``: take a run to a device over SSH, run the same ``edgexfer`` commands there, and
bring their outputs back into the run directory (remote is transport, not a second implementation).

- :mod:`~edgexfer.deploy.target`: ``[user@]host[:dir]`` parsed and checked;
- :mod:`~edgexfer.deploy.bundle`: what the device needs, staged as a small run directory with hashes;
- :mod:`~edgexfer.deploy.transport`: the user's OpenSSH client and rsync (a tar over ssh without it);
- :mod:`~edgexfer.deploy.setup`: ``--setup``, edgexfer's own wheel installed in a venv on the device, by
  :mod:`~edgexfer.deploy.bootstrap` (standard library only: it runs before edgexfer is there);
- :mod:`~edgexfer.deploy.device`: the few steps that run on the device (hash check, clean-up);
- :mod:`~edgexfer.deploy.remote`: doctor / build / verify / bench on the device;
- :mod:`~edgexfer.deploy.collect`: outputs back into ``RUN/devices/<host>/`` and the manifest.
"""
