"""Placeholder for PyAV on the GPU check's machine (tools/gpu_deploy/site.py puts it in the site
folder): the one decoder carried there is decord2. Importing works; any use raises ImportError."""


class error:  # noqa: N801  (PyAV's av.error namespace)
    class FFmpegError(Exception):
        pass


def __getattr__(name):
    raise ImportError(f"av.{name}: PyAV is not carried to the GPU machine (tools/gpu_wheels.sh carries decord2)")
