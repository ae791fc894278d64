"""SinkhornAssigner: balanced cluster assignment as a scikit-learn transformer."""
from numbers import Integral, Real

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin,
                          TransformerMixin, _fit_context)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._solver.priors import estimate_proportions
from ._solver.sinkhorn import SolverSettings, sinkhorn_knopp, solve

__all__ = ["SinkhornAssigner"]

# log(0) for "proba" input is replaced by log of this: a probability that small can never
# win against a real one, and the scores stay finite for the solver.
_PROBA_FLOOR = 1e-300


class SinkhornAssigner(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin,
                       BaseEstimator):
    r"""Balanced assignment of samples to clusters from per-cluster scores (SeLa's label step).

    ``fit`` solves the balanced optimal transport problem of :func:`sinkhorn_knopp` on the
    training scores and keeps the cluster log-scalings :math:`\log v_k`. Each cluster then
    has a fixed "price", so new rows are assigned one at a time, independently of each other:

    .. math::
        P(k \mid x) = \mathrm{softmax}_k(\lambda \, s_k(x) + \log v_k).

    On the training rows this reproduces the balanced assignment (cluster sizes follow
    ``prior``, uniform by default); on new rows from the same distribution it keeps the
    clusters close to those sizes.

    Parameters
    ----------
    lam : float, default=25.0
        Inverse entropic regularisation :math:`\lambda`: larger gives harder assignments.
        With ``input="distance"`` the squared distances are first divided by their typical
        size (``distance_scale_``), so the default suits distances of any scale.
    prior : array-like of shape (n_clusters,), "auto" or None, default=None
        Relative cluster sizes (normalised to sum 1); uniform when None. "auto" estimates
        them from the scores (EM for mixture proportions, floored so that no cluster
        vanishes; see the user guide): in :class:`SelfLabelClusterer` anew at every
        self-label step, starting from equal sizes.
    input : {"logits", "proba", "distance"}, default="logits"
        What the columns of ``X`` hold, one per cluster:

        - ``"logits"``: scores, higher is better (logits or log-probabilities);
        - ``"proba"``: probabilities, used through their log (zeros are floored at 1e-300);
        - ``"distance"``: distances to cluster centres, smaller is closer (for example
          ``KMeans.transform``); the score is the negative *squared* distance in units of
          ``distance_scale_`` (:math:`s = -d^2 / \sigma^2`), so that
          :math:`\exp(\lambda s)` is a Gaussian kernel and the assignment the responsibility
          of an isotropic Gaussian mixture with variance :math:`\sigma^2 / (2 \lambda)` and
          cluster weights set by the balance constraint.
    tol : float, default=1e-3
        Largest relative error of the cluster sizes (and row sums) at convergence.
    max_iter : int, default=1000
        Maximum number of Sinkhorn iterations.
    size_tolerance : float >= 0 or None, default=0.5
        Cluster sizes allowed for the hard labels of the fitted rows (``labels_``,
        :meth:`assign_tensor`): between ``1 - size_tolerance`` and ``1 + size_tolerance``
        times each cluster's share ``n_samples * prior_k``. Labels are the transport
        plan's row-wise argmax, and only samples of clusters outside those sizes are moved,
        chosen by the plan's confidence; the argmax alone piles into a few clusters when
        the plan is soft (many clusters, small ``lam``). 0 gives exactly the shares, 1 or
        more no lower bound; None keeps the plain argmax. New rows (:meth:`predict`) are
        assigned one at a time by argmax. On large matrices a slow tail of the solve
        below ``size_tolerance / 10`` ends it early (see :func:`sinkhorn_knopp`).

    Attributes
    ----------
    log_v_ : ndarray of shape (n_clusters,)
        Fitted cluster log-scalings (``-inf`` for clusters with zero prior).
    labels_ : ndarray of shape (n_samples,)
        Balanced hard assignment of the training rows.
    n_iter_ : int
        Sinkhorn iterations run by ``fit``.
    marginal_error_ : float
        Largest relative error of a row or cluster sum of the fitted training assignment.
    distance_scale_ : float
        Only with ``input="distance"``: :math:`\sigma^2`, the median over the training rows
        of the squared distance to the nearest centre (the mean squared distance if that
        median is 0, and 1 if all distances are 0). Fitted once, used for new rows too.
    n_features_in_ : int
        Number of columns (clusters) seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names seen during ``fit``, when ``X`` has string column names.

    See Also
    --------
    sinkhorn_knopp : The solver, with the mathematics.
    sklearn.cluster.KMeans : Its ``transform`` output is a natural ``input="distance"``.

    Examples
    --------
    Balanced clusters from k-means distances, in a pipeline:

    >>> import numpy as np
    >>> from sklearn.cluster import KMeans
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn.pipeline import make_pipeline
    >>> from skselflabel import SinkhornAssigner
    >>> X, _ = make_blobs(n_samples=[300, 60, 40], centers=[[0, 0], [4, 0], [0, 4]],
    ...                   cluster_std=1.5, random_state=0)
    >>> km = KMeans(n_clusters=4, n_init=3, random_state=0)
    >>> np.bincount(km.fit_predict(X))
    array([147,  77, 103,  73])
    >>> pipe = make_pipeline(km, SinkhornAssigner(input="distance"))
    >>> np.bincount(pipe.fit_predict(X))
    array([101,  99, 100, 100])

    A prior gives clusters of chosen sizes; ``transform`` gives soft assignments of new rows
    and ``predict`` their argmax:

    >>> pipe.set_params(sinkhornassigner__prior=[1, 1, 1, 5])
    Pipeline(...)
    >>> np.bincount(pipe.fit_predict(X))
    array([ 49,  51,  50, 250])
    >>> pipe.transform(X[:2]).round(2)
    array([[0., 0., 1., 0.],
           [0., 0., 0., 1.]])
    >>> pipe.predict(X[:2])
    array([2, 3])
    """

    _parameter_constraints: dict = {
        "lam": [Interval(Real, 0, None, closed="neither")],
        "prior": ["array-like", None, StrOptions({"auto"})],
        "input": [StrOptions({"logits", "proba", "distance"})],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "size_tolerance": [Interval(Real, 0, None, closed="left"), None],
    }

    def __init__(self, lam=25.0, prior=None, input="logits", tol=1e-3, max_iter=1000,
                 size_tolerance=0.5):
        self.lam = lam
        self.prior = prior
        self.input = input
        self.tol = tol
        self.max_iter = max_iter
        self.size_tolerance = size_tolerance

    def _scores(self, X):
        """Scores (higher is better) from X as described by ``input``."""
        if self.input == "logits":
            return X
        if (X < 0).any():
            raise ValueError(f"input={self.input!r} needs non-negative values; X has "
                             f"{int((X < 0).sum())} negative entries. Use input='logits' "
                             "for scores that can be negative.")
        if self.input == "proba":
            return np.log(np.maximum(X, _PROBA_FLOOR))
        return -np.square(X) / self.distance_scale_

    @staticmethod
    def _distance_scale(X):
        """Typical squared distance of a row to its nearest centre (see distance_scale_)."""
        sq = np.square(X, dtype=np.float64)
        for scale in (np.median(sq.min(axis=1)), sq.mean()):
            if scale > 0 and np.isfinite(scale):
                return float(scale)
        return 1.0

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Solve the balanced assignment of the rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_clusters)
            Per-cluster scores, probabilities or distances (see ``input``).
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : SinkhornAssigner
            Fitted assigner.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        if self.input == "distance":
            self.distance_scale_ = self._distance_scale(X)
        scores = self._scores(X)
        prior = self._prior(torch.from_numpy(scores), None, uniform=False)
        res = sinkhorn_knopp(scores, lam=self.lam, prior=prior, tol=self.tol,
                             max_iter=self.max_iter, size_tolerance=self.size_tolerance)
        self.cluster_sizes_ = np.asarray(res.prior)
        self.log_v_ = res.log_v
        self.labels_ = res.labels
        self.n_iter_ = res.n_iter
        self.marginal_error_ = res.marginal_error
        return self

    def _log_odds(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self.lam * self._scores(X).astype(np.float64) + self.log_v_

    def transform(self, X):
        """Soft assignment of each row: ``softmax_k(lam * score_k + log_v_k)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_clusters)
            Per-cluster scores, probabilities or distances (see ``input``).

        Returns
        -------
        Q : ndarray of shape (n_samples, n_clusters)
            Rows sum to 1; row ``i`` depends on row ``i`` of ``X`` only.
        """
        return softmax(self._log_odds(X), axis=1)

    def predict(self, X):
        """Cluster of each row: ``argmax_k lam * score_k + log_v_k``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_clusters)
            Per-cluster scores, probabilities or distances (see ``input``).

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster indices.
        """
        return self._log_odds(X).argmax(axis=1)

    def _prior(self, scores, previous, uniform):
        """The column marginal of one solve: uniform, the given prior, or (``"auto"``)
        proportions estimated from ``scores`` starting at ``previous`` (equal if None)."""
        if uniform or self.prior is None:
            return None
        if isinstance(self.prior, str):
            k = scores.shape[1]
            start = torch.full((k,), 1.0 / k, dtype=torch.float64) if previous is None \
                else torch.as_tensor(previous, dtype=torch.float64)
            return estimate_proportions(scores, start).cpu().numpy()
        return np.asarray(self.prior, np.float64)

    def assign_tensor(self, scores, *, uniform=False, copy=True, min_size_tolerance=0.0,
                      previous_prior=None, init_log_v=None):
        """Balanced hard assignment of a score tensor, computed where the tensor lives.

        The entry point of :class:`SelfLabelClusterer`'s self-label step: it solves the
        same problem as :meth:`fit` with this assigner's ``lam``, ``prior``, ``tol`` and
        ``max_iter``, but takes and returns torch tensors on their device, and fits
        nothing (the assigner is left unchanged). ``scores`` are read as logits (higher is
        better) whatever ``input`` says.

        Parameters
        ----------
        scores : torch.Tensor of shape (n_samples, n_clusters)
            Logits or log-probabilities, on any device.
        uniform : bool, default=False
            Use equal cluster sizes instead of ``prior`` (auxiliary heads do).
        copy : bool, default=True
            If False, ``scores`` may be overwritten (no second ``n_samples x n_clusters``
            buffer is allocated).
        min_size_tolerance : float, default=0.0
            Allow cluster sizes at least this far from their shares, even when
            ``size_tolerance`` is tighter (:class:`SelfLabelClusterer` widens the sizes of
            its early self-label steps so); no effect when ``size_tolerance`` is None.
        previous_prior : array-like of shape (n_clusters,), default=None
            With ``prior="auto"``: the proportions of the previous self-label step, where
            the estimate starts (equal sizes if None).
        init_log_v : torch.Tensor or array-like of shape (n_clusters,), default=None
            Column log-scalings to start Sinkhorn from: :class:`SelfLabelClusterer` passes
            the ``log_v`` of the head's previous self-label step (see
            :func:`sinkhorn_knopp`). Only the starting point changes, not the problem: the
            solve still stops at ``tol`` for these scores and sizes.

        Returns
        -------
        result : SinkhornResult
            With ``labels`` (int64), ``log_u``, ``log_v`` and ``prior`` (the proportions
            solved for) as tensors on the device of ``scores``, ``n_iter`` and
            ``marginal_error``.

        Examples
        --------
        >>> import torch
        >>> from skselflabel import SinkhornAssigner
        >>> scores = torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.5, 0.0], [0.0, 1.0]])
        >>> SinkhornAssigner(lam=10.0).assign_tensor(scores).labels
        tensor([0, 1, 0, 1])
        """
        prior = self._prior(scores, previous_prior, uniform)
        tolerance = self.size_tolerance
        if tolerance is not None:
            tolerance = max(tolerance, min_size_tolerance)
        return solve(scores, SolverSettings(lam=self.lam, prior=prior, tol=self.tol,
                                            max_iter=self.max_iter, copy=copy,
                                            init_log_v=init_log_v,
                                            size_tolerance=tolerance))

    @property
    def _n_features_out(self):
        return self.n_features_in_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags
