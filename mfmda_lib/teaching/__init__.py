"""What the notebooks use to teach: the write-the-core exercises' checks and fallbacks (``exercises``).

The tools that build the course's material (student editions, slides, publishing) are not part of the
package: they live in the repository's ``course/`` folder.
"""
