"""A local stand-in for Supabase (PostgREST + Realtime), Cloudinary and an image generator.

Real PostgreSQL underneath, real wire protocols on top, fault switches for tests.
"""
