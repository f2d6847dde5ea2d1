"""Errors as Cloudinary answers them: ``{"error": {"message": ...}}`` with its status.

The messages are copied from the real service, because the SDK and the worker show them.
"""

from __future__ import annotations

from aiohttp import web


class UploadRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)
