"""Everything the worker does with Cloudinary: the signed upload of a job's image (``upload``),
the account parsed from ``CLOUDINARY_URL`` (``account``), the upload's context metadata
(``context``), and delivery URLs, a thumbnail's or a generator's ``cloudinary_link`` (``delivery``).
"""

from worker.pipeline.cloudinary.account import CloudinaryAccount
from worker.pipeline.cloudinary.context import encode_context, job_context
from worker.pipeline.cloudinary.upload import CloudinaryUploader, UploadedImage

__all__ = [
    "CloudinaryAccount",
    "CloudinaryUploader",
    "UploadedImage",
    "encode_context",
    "job_context",
]
