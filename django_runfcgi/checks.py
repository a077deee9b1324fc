"""System checks for runfcgi settings."""

from __future__ import annotations
