"""The image pipeline, the work each job exists for (``step``): the generator kinds
(``generators``: the generic protocol, Replicate, OpenAI, fal), the safe download of image URLs (``download``) under the address policy
(``addresses``), what the worker knows about images (``images``), and Cloudinary (``cloudinary``).
"""
