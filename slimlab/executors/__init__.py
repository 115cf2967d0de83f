"""Executors decide where runs execute; `local` runs them one after another in this process."""
