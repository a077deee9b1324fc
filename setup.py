"""The optional C accelerator; everything else is in pyproject.toml.

Built against Python 3.10's stable ABI, so one wheel serves every supported Python.
Without a compiler the build goes on without it, and the Python code does its work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "django_runfcgi.protocols._speedups",
            sources=["django_runfcgi/protocols/_speedups.c"],
            define_macros=[("Py_LIMITED_API", "0x030A0000")],
            py_limited_api=True,
            optional=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
