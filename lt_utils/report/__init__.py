"""Report code: one function per figure, saved as PDF + PNG.

It reads tidy frames made by the stages; the core never imports it.
"""
