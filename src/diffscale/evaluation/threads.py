"""Kept for ``from diffscale.evaluation.threads import single_thread``; the thread policy lives in
:mod:`diffscale.threads`."""

from diffscale.threads import single_thread

__all__ = ["single_thread"]
