"""The core's error for unusable artifacts (its own module so that the artifact reader can
load trees and item catalogs, which raise it, without an import cycle)."""

from __future__ import annotations


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message is one line naming the file and the problem."""
