"""Training: captions --> images/caption states --> first stage (dual encoder) --> second stage
(re-ranker) --> model directory. training/run.py holds the library calls behind `imgsearch train`
and `imgsearch eval`."""
