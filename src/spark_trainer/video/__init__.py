"""Video, image and audio ingestion: probe, integrity, frames, scenes, audio, transcription, captions."""
