"""Recommendations: a user's photos -> style profile -> the repository items that fit it best
(:mod:`.recommendations`), scored by :mod:`.scoring` and shown as an HTML page by :mod:`.report`."""
