"""A local stand-in for Supabase (PostgREST, Realtime, Auth), Cloudinary and image generators.

Real PostgreSQL underneath, real wire protocols on top, fault switches for tests.
"""
