"""The peers (APScheduler 3 and 4), each driven in its own environment by a script printing JSON."""
