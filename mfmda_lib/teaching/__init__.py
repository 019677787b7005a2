"""Teaching tools around the notebooks: student versions (``student``) and seminar slides (``slides``).

Run them as modules: ``python -m mfmda_lib.teaching.student`` (``make student``) and
``python -m mfmda_lib.teaching.slides`` (``make slides``).
"""
