package provision

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// errStopped ends a job whose server was deleted or failed meanwhile.
var errStopped = errors.New("job stopped")

// permanent reports whether a step failure will not go away by retrying.
func permanent(err error) bool {
	var pe *problem.Error
	if errors.As(err, &pe) {
		return true
	}
	switch cloud.CodeOf(err) {
	case cloud.CodeRateLimited, cloud.CodeProviderError:
		return false
	}
	var ce *cloud.Error
	return errors.As(err, &ce)
}

// job is one run of a server's provisioning.
type job struct {
	s     *Service
	srv   store.Server
	slug  string
	log   *zap.Logger
	cloud cloud.Provider
}

func (s *Service) runProvision(ctx context.Context, id string) {
	srv, err := s.store.Q().GetServer(ctx, "", id)
	if err != nil {
		s.log.Error("load server", zap.String("server", id), zap.Error(err))
		return
	}
	j := &job{s: s, srv: srv, log: s.log.With(zap.String("server", id))}
	ws, err := s.store.Q().WorkspaceByID(ctx, srv.WorkspaceID)
	if err != nil {
		j.log.Error("load workspace", zap.Error(err))
		return
	}
	j.slug = ws.Slug
	steps, err := s.store.Q().Steps(ctx, id)
	if err != nil {
		j.log.Error("load steps", zap.Error(err))
		return
	}
	for _, st := range steps {
		if st.State == StepDone {
			continue
		}
		if st.State == StepFailed {
			return
		}
		if err := j.step(ctx, st); err != nil {
			if !errors.Is(err, errStopped) && ctx.Err() == nil {
				j.log.Warn("provisioning failed", zap.String("step", st.Name), zap.Error(err))
			}
			return
		}
	}
	// Every step is recorded done: the install is confirmed. (An agent
	// that dropped meanwhile turns it offline through the hub.)
	if _, err := s.store.Q().SetServerState(ctx, id, StateOnline, s.now(), StateInstalling); err != nil {
		j.log.Error("mark online", zap.Error(err))
		return
	}
	s.m.jobs.WithLabelValues("online").Inc()
	j.log.Info("server online")
}

// step runs one step: recorded as running, retried while its failure is
// transient (until StepTimeout), recorded as done or failed.
func (j *job) step(ctx context.Context, st store.Step) error {
	s := j.s
	if err := j.reload(ctx); err != nil {
		return err
	}
	if err := s.store.Q().StartStep(ctx, j.srv.ID, st.Seq, s.now()); err != nil {
		return err
	}
	j.log.Debug("step started", zap.String("step", st.Name))
	started := s.now()
	deadline := started.Add(s.o.StepTimeout)
	for attempt := 0; ; attempt++ {
		detail, err := j.run(ctx, st.Name)
		if err == nil {
			if ferr := s.store.Q().FinishStep(context.WithoutCancel(ctx), j.srv.ID, st.Seq, StepDone, "", detail, s.now()); ferr != nil {
				return ferr
			}
			s.m.stepEnded(st.Name, outcomeDone, started, s.now())
			j.log.Info("step done", zap.String("step", st.Name))
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, errStopped) {
			return errStopped
		}
		if permanent(err) || s.now().After(deadline) {
			s.m.stepEnded(st.Name, outcomeFailed, started, s.now())
			return j.fail(st, err)
		}
		s.m.stepEnded(st.Name, outcomeRetried, started, s.now())
		// Transient: note it on the step so the user sees why it waits.
		_ = s.store.Q().NoteStep(ctx, j.srv.ID, st.Seq, errorJSON(st.Name, err), "retrying after a transient failure")
		wait := s.o.RetryMin << min(attempt, 5)
		var ce *cloud.Error
		if errors.As(err, &ce) && ce.RetryAfter > wait {
			wait = ce.RetryAfter
		}
		wait = wait/2 + rand.N(wait/2+1)
		j.log.Debug("step will be retried", zap.String("step", st.Name), zap.Duration("wait", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return errStopped
		case <-time.After(wait):
		}
	}
}

func (j *job) fail(st store.Step, err error) error {
	s := j.s
	ctx := context.Background()
	ej := errorJSON(st.Name, err)
	if ferr := s.store.Q().FinishStep(ctx, j.srv.ID, st.Seq, StepFailed, ej, "", s.now()); ferr != nil {
		return ferr
	}
	ok, ferr := s.store.Q().FailServer(ctx, j.srv.ID, ej, s.now())
	if ferr != nil {
		return ferr
	}
	if !ok {
		return errStopped // deleted meanwhile
	}
	return err
}

// reload refreshes the server row and stops the job if the server left
// the provisioning states (deleted, failed).
func (j *job) reload(ctx context.Context) error {
	srv, err := j.s.store.Q().GetServer(ctx, "", j.srv.ID)
	if err != nil {
		return err
	}
	j.srv = srv
	if srv.State != StateProvisioning && srv.State != StateInstalling {
		return errStopped
	}
	return nil
}

func (j *job) save(ctx context.Context) error {
	return j.s.store.Q().SaveProvisioning(ctx, j.srv, j.s.now())
}

func (j *job) provider(ctx context.Context) (cloud.Provider, error) {
	if j.cloud != nil {
		return j.cloud, nil
	}
	if j.srv.IntegrationID == "" {
		return nil, problem.Conflict("Connect the cloud account again and create the server anew.",
			"the integration this server was created with was removed")
	}
	p, err := j.s.integrations.Provider(ctx, j.srv.WorkspaceID, j.srv.IntegrationID)
	if err != nil {
		return nil, err
	}
	j.cloud = p
	return p, nil
}

func (j *job) tags() []string {
	return []string{TagAll, TagWorkspace(j.slug), TagServer(j.srv.ID)}
}

func (j *job) run(ctx context.Context, name string) (string, error) {
	switch name {
	case StepPreflight:
		return j.preflight(ctx)
	case StepSSHKey:
		return j.sshKey(ctx)
	case StepFirewall:
		return j.firewall(ctx)
	case StepInstance:
		return j.instance(ctx)
	case StepWaitActive:
		return j.waitActive(ctx)
	case StepWaitAgent:
		return j.waitAgent(ctx)
	}
	return "", fmt.Errorf("unknown step %q", name)
}

// preflight checks the request against the provider's catalog and limits
// before anything is created.
func (j *job) preflight(ctx context.Context) (string, error) {
	p, err := j.provider(ctx)
	if err != nil {
		return "", err
	}
	cat, err := j.s.integrations.Catalog(ctx, j.srv.WorkspaceID, j.srv.IntegrationID, true)
	if err != nil {
		return "", err
	}
	pv := j.srv.Provider
	region, size, img, err := CheckChoice(cat, pv, "preflight", j.srv.Region, j.srv.Size, j.srv.Image)
	if err != nil {
		return "", err
	}
	acct, err := p.Validate(ctx)
	if err != nil {
		return "", err
	}
	if acct.InstanceLimit > 0 {
		all, err := p.ListInstances(ctx, "")
		if err != nil {
			return "", err
		}
		if len(all) >= acct.InstanceLimit {
			return "", &cloud.Error{Code: cloud.CodeQuotaExceeded, Provider: pv, Op: "preflight",
				Message: fmt.Sprintf("the account already has %d of its %d allowed servers", len(all), acct.InstanceLimit),
				Hint:    "Delete unused servers or ask the provider's support to raise the limit."}
		}
	}
	j.srv.ImageID = img.ID
	if err := j.save(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s in %s", size.ID, img.ID, region.ID), nil
}

func (j *job) sshKey(ctx context.Context) (string, error) {
	p, err := j.provider(ctx)
	if err != nil {
		return "", err
	}
	k, err := j.s.workspaceKey(ctx, j.srv.WorkspaceID)
	if err != nil {
		return "", err
	}
	id, err := p.EnsureSSHKey(ctx, "devpilot-"+j.slug, k.PublicKey)
	if err != nil {
		return "", err
	}
	j.srv.SSHKeyID = id
	return k.Fingerprint, j.save(ctx)
}

func (j *job) firewall(ctx context.Context) (string, error) {
	p, err := j.provider(ctx)
	if err != nil {
		return "", err
	}
	var ports []int
	if err := jsonUnmarshal(j.srv.PortsJSON, &ports); err != nil {
		return "", err
	}
	id, err := p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: FirewallName(j.srv.ID), Tag: TagServer(j.srv.ID), Ports: ports})
	if err != nil {
		return "", err
	}
	j.srv.FirewallID = id
	return "inbound tcp " + strings.Trim(strings.ReplaceAll(j.srv.PortsJSON, ",", ", "), "[]"), j.save(ctx)
}

// instance creates the droplet/instance unless one tagged for this server
// exists already (a previous attempt that died before recording its id).
func (j *job) instance(ctx context.Context) (string, error) {
	p, err := j.provider(ctx)
	if err != nil {
		return "", err
	}
	found, err := p.ListInstances(ctx, TagServer(j.srv.ID))
	if err != nil {
		return "", err
	}
	if len(found) > 0 {
		j.srv.InstanceID = found[0].ID
		j.log.Info("instance found by tag; not creating another", zap.String("instance", found[0].ID))
		return "found " + found[0].ID + " by tag", j.save(ctx)
	}
	_, token, hash := auth.NewToken()
	if err := j.s.store.Q().CreateBootstrapToken(ctx, hash, j.srv.ID, j.s.now().Add(j.s.o.TokenTTL)); err != nil {
		return "", err
	}
	userData, err := j.s.userData(j.srv.ID, j.srv.Name, token)
	if err != nil {
		return "", problem.Validation("", "render user-data: %v", err)
	}
	inst, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: j.srv.Name, Region: j.srv.Region, Size: j.srv.Size,
		Image: j.srv.ImageID, UserData: string(userData), Tags: j.tags(), SSHKeyIDs: []string{j.srv.SSHKeyID},
		FirewallID: j.srv.FirewallID})
	if err != nil {
		return "", err
	}
	j.srv.InstanceID = inst.ID
	return "created " + inst.ID, j.save(ctx)
}

// waitActive polls (one list call per workspace and poll interval serves
// every waiting server) until the instance runs with a public IPv4.
func (j *job) waitActive(ctx context.Context) (string, error) {
	p, err := j.provider(ctx)
	if err != nil {
		return "", err
	}
	key := j.srv.IntegrationID + "/" + TagWorkspace(j.slug)
	for {
		insts, err := j.s.watch.list(ctx, key, func(ctx context.Context) ([]cloud.Instance, error) {
			return p.ListInstances(ctx, TagWorkspace(j.slug))
		})
		if err != nil {
			return "", err
		}
		i := slices.IndexFunc(insts, func(in cloud.Instance) bool { return in.ID == j.srv.InstanceID })
		if i >= 0 && insts[i].State == cloud.StateActive && insts[i].PublicIPv4 != "" {
			j.srv.PublicIPv4 = insts[i].PublicIPv4
			return insts[i].PublicIPv4, j.save(ctx)
		}
		if i < 0 {
			// Not in the list (yet, or gone): ask for it directly.
			if _, err := p.GetInstance(ctx, j.srv.InstanceID); cloud.CodeOf(err) == cloud.CodeNotFound {
				return "", &cloud.Error{Code: cloud.CodeNotFound, Provider: j.srv.Provider, Op: "wait for instance",
					Message: "instance " + j.srv.InstanceID + " disappeared", Hint: "It was deleted outside Devpilot; delete this server and create it again."}
			}
		}
		select {
		case <-ctx.Done():
			return "", errStopped
		case <-time.After(j.s.o.PollInterval):
		}
		if err := j.reload(ctx); err != nil {
			return "", err
		}
	}
}

// waitAgent waits for the agent's first enrollment, which confirms the
// install, up to the server's agent timeout counted from the step's start.
func (j *job) waitAgent(ctx context.Context) (string, error) {
	s := j.s
	if _, err := s.store.Q().SetServerState(ctx, j.srv.ID, StateInstalling, s.now(), StateProvisioning); err != nil {
		return "", err
	}
	steps, err := s.store.Q().Steps(ctx, j.srv.ID)
	if err != nil {
		return "", err
	}
	started := s.now()
	for _, st := range steps {
		if st.Name == StepWaitAgent && st.StartedAt != nil {
			started = *st.StartedAt
		}
	}
	deadline := started.Add(time.Duration(j.srv.AgentTimeoutS) * time.Second)
	ch := s.waiter(j.srv.ID)
	defer s.dropWaiter(j.srv.ID)
	for {
		if err := j.reload(ctx); err != nil {
			return "", err
		}
		if j.srv.InstalledAt != nil {
			return "agent " + j.srv.AgentVersion + " enrolled", nil
		}
		left := deadline.Sub(s.now())
		if left <= 0 {
			j.diagnose(ctx)
			return "", &problem.Error{Code: "agent_timeout", Message: fmt.Sprintf("the agent did not confirm the install within %s",
				time.Duration(j.srv.AgentTimeoutS)*time.Second),
				Hint: "Check the server's cloud-init output (/var/log/cloud-init-output.log) and `journalctl -u devpilot-agent`; " +
					"the server must reach the control plane's public URL."}
		}
		select {
		case <-ctx.Done():
			return "", errStopped
		case <-ch:
		case <-time.After(min(left, 5*time.Second)):
		}
	}
}

func (s *Service) waiter(id string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.waiters[id]
	if !ok {
		ch = make(chan struct{}, 1)
		s.waiters[id] = ch
	}
	return ch
}

func (s *Service) dropWaiter(id string) {
	s.mu.Lock()
	delete(s.waiters, id)
	s.mu.Unlock()
}

func (s *Service) wake(id string) {
	s.mu.Lock()
	ch, ok := s.waiters[id]
	s.mu.Unlock()
	if ok {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// runDelete destroys a server's instance(s) and firewall, then marks it
// deleted. It finds instances by the server's tag too, so one created by
// an attempt that died before recording its id is not left behind.
func (s *Service) runDelete(ctx context.Context, id string) {
	log := s.log.With(zap.String("server", id))
	for attempt := 0; ; attempt++ {
		err := s.destroy(ctx, id)
		if err == nil {
			log.Info("server destroyed")
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("destroy failed; will retry", zap.Error(err))
		if permanent(err) {
			if _, ferr := s.store.Q().FailServer(ctx, id, errorJSON("destroy", err), s.now()); ferr != nil {
				log.Error("record failed destroy", zap.Error(ferr))
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.o.RetryMin << min(attempt, 5)):
		}
	}
}

func (s *Service) destroy(ctx context.Context, id string) error {
	srv, err := s.store.Q().GetServer(ctx, "", id)
	if err != nil {
		return err
	}
	if srv.State != StateDeleting {
		return nil
	}
	p, err := s.integrations.Provider(ctx, srv.WorkspaceID, srv.IntegrationID)
	if err != nil {
		return err
	}
	insts, err := p.ListInstances(ctx, TagServer(id))
	if err != nil {
		return err
	}
	var ids []string
	for _, in := range insts {
		ids = append(ids, in.ID)
	}
	if srv.InstanceID != "" && !slices.Contains(ids, srv.InstanceID) {
		ids = append(ids, srv.InstanceID)
	}
	for _, iid := range ids {
		if err := p.DeleteInstance(ctx, iid); err != nil {
			return err
		}
	}
	if srv.FirewallID != "" {
		if err := p.DeleteFirewall(ctx, srv.FirewallID); err != nil {
			return err
		}
	}
	_, err = s.store.Q().SetServerState(ctx, id, StateDeleted, s.now(), StateDeleting)
	return err
}

// diagnose collects and stores diagnostics of a server whose agent did not
// confirm the install (best effort: its own failure is what gets stored).
func (j *job) diagnose(ctx context.Context) {
	s := j.s
	if s.o.Diagnose == nil {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	text, err := s.o.Diagnose(dctx, DiagnoseTarget{ServerID: j.srv.ID, WorkspaceID: j.srv.WorkspaceID,
		PublicIPv4: j.srv.PublicIPv4, Signer: func(ctx context.Context) (ssh.Signer, error) {
			return s.Signer(ctx, j.srv.WorkspaceID)
		}})
	if err != nil {
		text = strings.TrimSpace(text + "\n\ndiagnostics incomplete: " + err.Error())
	}
	if serr := s.store.Q().SetDiagnostics(context.WithoutCancel(ctx), j.srv.ID, text); serr != nil {
		j.log.Error("store diagnostics", zap.Error(serr))
	}
}

// CheckChoice finds region, size and image in the catalog and refuses,
// naming the valid choices, a region that is unknown or closed, a size
// unknown or not offered there (the sizes available in that region), or an
// unknown image. op names the caller in the error ("" at the API's door).
func CheckChoice(cat *cloud.Catalog, pv, op, regionID, sizeID, imageID string) (cloud.Region, cloud.Size, cloud.Image, error) {
	region, ok := cat.Region(regionID)
	if !ok || !region.Available {
		var avail []string
		for _, r := range cat.Regions {
			if r.Available {
				avail = append(avail, r.ID)
			}
		}
		code, what := cloud.CodeValidation, "unknown"
		if ok {
			code, what = cloud.CodeUnavailable, "not accepting new servers"
		}
		return cloud.Region{}, cloud.Size{}, cloud.Image{}, &cloud.Error{Code: code, Provider: pv, Op: op,
			Message: fmt.Sprintf("region %q is %s", regionID, what), Hint: "Regions open now: " + joinMax(avail, 15) + "."}
	}
	size, ok := cat.Size(sizeID)
	if !ok {
		var ids []string
		for _, s := range cat.Sizes {
			if slices.Contains(s.Regions, regionID) {
				ids = append(ids, s.ID)
			}
		}
		return cloud.Region{}, cloud.Size{}, cloud.Image{}, &cloud.Error{Code: cloud.CodeValidation, Provider: pv, Op: op,
			Message: fmt.Sprintf("size %q is unknown", sizeID), Hint: "Sizes available in " + regionID + ": " + joinMax(ids, 12) + "."}
	}
	if !slices.Contains(size.Regions, regionID) {
		hint := fmt.Sprintf("%s is not offered anywhere right now.", size.ID)
		if len(size.Regions) > 0 {
			hint = fmt.Sprintf("%s is available now in: %s. Pick one of those regions or another size.", size.ID, joinMax(size.Regions, 15))
		}
		what := "not offered"
		if slices.Contains(size.SoldOut, regionID) {
			what = "sold out"
		}
		return cloud.Region{}, cloud.Size{}, cloud.Image{}, &cloud.Error{Code: cloud.CodeUnavailable, Provider: pv, Op: op,
			Message: fmt.Sprintf("size %s is %s in %s", size.ID, what, regionID), Hint: hint}
	}
	img, ok := cat.Image(imageID)
	if !ok {
		var names []string
		for n := range cloud.NeutralImages {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, im := range cat.Images {
			names = append(names, im.ID)
		}
		return cloud.Region{}, cloud.Size{}, cloud.Image{}, &cloud.Error{Code: cloud.CodeValidation, Provider: pv, Op: op,
			Message: fmt.Sprintf("image %q is unknown", imageID), Hint: "Images: " + joinMax(names, 12) + "."}
	}
	return region, size, img, nil
}
