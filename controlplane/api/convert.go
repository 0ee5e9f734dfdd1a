package api

import (
	"encoding/json"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/keyrotation"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/tasks"
	"github.com/devpilot/devpilot/controlplane/webhooks"
)

// The boundary: services speak their own types, the API speaks apitypes.
// One small function per type.

func workspaceOut(w store.Workspace) apitypes.Workspace {
	return apitypes.Workspace{ID: w.ID, Slug: w.Slug, Name: w.Name, CreatedAt: w.CreatedAt}
}

func tokenOut(t store.Token, wsSlug string) apitypes.Token {
	return apitypes.Token{ID: t.ID, Name: t.Name, Role: t.Role, CreatedBy: t.CreatedBy, CreatedAt: t.CreatedAt,
		LastUsedAt: t.LastUsedAt, RevokedAt: t.RevokedAt, Workspace: wsSlug}
}

func auditOut(e store.AuditEntry) apitypes.AuditEntry {
	d := json.RawMessage("null")
	if e.DetailJSON != "" && json.Valid([]byte(e.DetailJSON)) {
		d = json.RawMessage(e.DetailJSON)
	}
	return apitypes.AuditEntry{ID: e.ID, Actor: e.Actor, Action: e.Action, Target: e.Target, At: e.At, Detail: d}
}

func keyRotationOut(r keyrotation.Result) apitypes.KeyRotation {
	out := apitypes.KeyRotation{KeyID: r.KeyID, Reencrypted: r.Reencrypted, Retired: r.Retired, Kept: r.Kept,
		Skipped: make([]apitypes.SkippedRotation, 0, len(r.Skipped))}
	for _, s := range r.Skipped {
		out.Skipped = append(out.Skipped, apitypes.SkippedRotation{Table: s.Table, ID: s.ID, KeyID: s.KeyID, Reason: s.Reason})
	}
	return out
}

func integrationOut(in *integrations.Integration) apitypes.Integration {
	out := apitypes.Integration{ID: in.ID, Provider: in.Provider, AccessKey: in.AccessKey, SecretKeyHint: in.SecretKeyHint,
		Status: in.Status, WriteAccess: in.WriteAccess, LastValidatedAt: in.LastValidatedAt,
		CreatedAt: in.CreatedAt, UpdatedAt: in.UpdatedAt}
	if a := in.Account; a != nil {
		out.Account = &apitypes.Account{Name: a.Name, Email: a.Email, Status: a.Status, InstanceLimit: a.InstanceLimit,
			Write: string(a.Write), Permissions: a.Permissions}
	}
	if e := in.LastError; e != nil {
		out.LastError = &apitypes.Problem{Code: e.Code, Message: e.Message, Hint: e.Hint}
	}
	return out
}

func catalogOut(c *cloud.Catalog) apitypes.Catalog {
	out := apitypes.Catalog{Provider: c.Provider, FetchedAt: c.FetchedAt, Regions: make([]apitypes.Region, 0, len(c.Regions)),
		Sizes: make([]apitypes.Size, 0, len(c.Sizes)), Images: make([]apitypes.Image, 0, len(c.Images))}
	for _, r := range c.Regions {
		out.Regions = append(out.Regions, apitypes.Region{ID: r.ID, Name: r.Name, Available: r.Available})
	}
	for _, s := range c.Sizes {
		out.Sizes = append(out.Sizes, apitypes.Size{ID: s.ID, VCPUs: s.VCPUs, MemoryMB: s.MemoryMB, DiskGB: s.DiskGB,
			PriceMonthly: s.PriceMonthly, Regions: nonNil(s.Regions), SoldOut: nonNil(s.SoldOut)})
	}
	for _, i := range c.Images {
		out.Images = append(out.Images, apitypes.Image{ID: i.ID, Name: i.Name, Distribution: i.Distribution, Neutral: i.Neutral})
	}
	return out
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func stepErrorOut(e *provision.StepError) *apitypes.StepError {
	if e == nil {
		return nil
	}
	return &apitypes.StepError{Step: e.Step, Code: e.Code, Message: e.Message, Hint: e.Hint}
}

func lastUpdateOut(lu *provision.LastUpdateView) *apitypes.AgentLastUpdate {
	if lu == nil {
		return nil
	}
	return &apitypes.AgentLastUpdate{ActionID: lu.ID, Result: lu.Result, FromVersion: lu.From, ToVersion: lu.To,
		Reason: lu.Reason, ReportedAt: lu.ReportedAt}
}

func serverOut(s *provision.Server) apitypes.Server {
	out := apitypes.Server{ID: s.ID, Name: s.Name, Provider: s.Provider, IntegrationID: s.IntegrationID, Region: s.Region,
		Size: s.Size, Image: s.Image, Ports: nonNil(s.Ports), State: s.State, StateReason: s.StateReason,
		QuarantinedAt: s.QuarantinedAt, InstanceID: s.InstanceID, PublicIPv4: s.PublicIPv4, Tags: nonNil(s.Tags),
		Steps: make([]apitypes.Step, 0, len(s.Steps)), Health: s.Health, HealthAt: s.HealthAt,
		Agent: apitypes.Agent{Connected: s.Agent.Connected, Version: s.Agent.Version, InstalledAt: s.Agent.InstalledAt,
			LastSeenAt: s.Agent.LastSeenAt, Facts: s.Agent.Facts, TargetVersion: s.Agent.TargetVersion,
			OutsideTarget: s.Agent.OutsideTarget, LastUpdate: lastUpdateOut(s.Agent.LastUpdate)},
		Error: stepErrorOut(s.Error), Diagnostics: s.Diagnostics, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt}
	for _, st := range s.Steps {
		out.Steps = append(out.Steps, apitypes.Step{Name: st.Name, State: st.State, Attempts: st.Attempts,
			StartedAt: st.StartedAt, FinishedAt: st.FinishedAt, Error: stepErrorOut(st.Error), Detail: st.Detail})
	}
	return out
}

func rekeyOut(r *provision.Rekey) apitypes.Rekey {
	out := apitypes.Rekey{Delivered: r.Delivered, DeliveryError: r.DeliveryError, BootstrapToken: r.BootstrapToken,
		ExpiresAt: r.ExpiresAt, Command: r.Command}
	if r.Server != nil {
		s := serverOut(r.Server)
		out.Server = &s
	}
	return out
}

func healthOut(p store.HealthPoint) apitypes.HealthSample {
	return apitypes.HealthSample{At: p.At, CPUPercent: p.CPUPercent, Load1: p.Load1, MemUsedMB: p.MemUsedMB,
		MemTotalMB: p.MemTotalMB, DiskUsedMB: p.DiskUsedMB, DiskTotalMB: p.DiskTotalMB}
}

func createServerIn(r apitypes.CreateServer) provision.CreateRequest {
	return provision.CreateRequest{IntegrationID: r.IntegrationID, Name: r.Name, Region: r.Region, Size: r.Size,
		Image: r.Image, Ports: r.Ports}
}

func stepFieldsIn(f apitypes.StepFields) tasks.StepFields {
	return tasks.StepFields{Argv: f.Argv, Env: f.Env, Dir: f.Dir, User: f.User, TimeoutS: f.TimeoutS,
		MaxOutputBytes: f.MaxOutputBytes, Unit: f.Unit, Action: f.Action, Path: f.Path, ContentBase64: f.ContentBase64,
		Mode: f.Mode, Owner: f.Owner, Group: f.Group}
}

func stepsIn(ss []apitypes.TaskStep) []tasks.Step {
	if ss == nil {
		return nil
	}
	out := make([]tasks.Step, 0, len(ss))
	for _, s := range ss {
		out = append(out, tasks.Step{Name: s.Name, Kind: s.Kind, StepFields: stepFieldsIn(s.StepFields), Ports: s.Ports})
	}
	return out
}

func taskSpecIn(s apitypes.TaskSpec) tasks.Spec {
	return tasks.Spec{Kind: s.Kind, StepFields: stepFieldsIn(s.StepFields), Steps: stepsIn(s.Steps), DeadlineS: s.DeadlineS}
}

func deploymentIn(d apitypes.CreateDeployment) tasks.DeploymentRequest {
	return tasks.DeploymentRequest{Servers: d.Servers, Tag: d.Tag, MaxParallel: d.MaxParallel,
		Plan: tasks.Plan{Steps: stepsIn(d.Plan.Steps)}, DeadlineS: d.DeadlineS}
}

func taskOut(t *tasks.Task) apitypes.Task {
	return apitypes.Task{ID: t.ID, ServerID: t.ServerID, DeploymentID: t.DeploymentID, Kind: t.Kind, State: t.State,
		Reason: t.Reason, Error: t.Error, ExitCode: t.ExitCode, Attempts: t.Attempts, CreatedBy: t.CreatedBy,
		CreatedAt: t.CreatedAt, Deadline: t.Deadline, SentAt: t.SentAt, StartedAt: t.StartedAt, FinishedAt: t.FinishedAt,
		CancelRequestedAt: t.CancelRequestedAt, SHA256: t.SHA256, Unit: t.Unit, Steps: t.Steps,
		Log: apitypes.LogInfo{Seq: t.Log.Seq, Bytes: t.Log.Bytes, Truncated: t.Log.Truncated}, Spec: t.Spec}
}

func logChunkOut(c tasks.LogChunk) apitypes.LogChunk {
	return apitypes.LogChunk{Seq: c.Seq, Stream: c.Stream, Step: c.Step, Text: c.Text, Data: c.Data, At: c.At}
}

func logPageOut(p *tasks.LogPage) apitypes.LogPage {
	out := apitypes.LogPage{TaskID: p.TaskID, State: p.State, Chunks: make([]apitypes.LogChunk, 0, len(p.Chunks)),
		Next: p.Next, More: p.More, Done: p.Done, Truncated: p.Truncated}
	for _, c := range p.Chunks {
		out.Chunks = append(out.Chunks, logChunkOut(c))
	}
	return out
}

func deploymentOut(d *tasks.Deployment) apitypes.Deployment {
	out := apitypes.Deployment{ID: d.ID, State: d.State, Tag: d.Tag, MaxParallel: d.MaxParallel, DeadlineS: d.DeadlineS,
		Error: d.Error, CreatedBy: d.CreatedBy, CreatedAt: d.CreatedAt, FinishedAt: d.FinishedAt, Counts: d.Counts,
		Targets: make([]apitypes.Target, 0, len(d.Targets)), Plan: d.Plan}
	for _, f := range d.Firewall {
		out.Firewall = append(out.Firewall, apitypes.FirewallStep{Step: f.Step, Name: f.Name, Ports: f.Ports})
	}
	for _, t := range d.Targets {
		out.Targets = append(out.Targets, apitypes.Target{ServerID: t.ServerID, Batch: t.Batch, TaskID: t.TaskID, ActionID: t.ActionID,
			State: t.State, Reason: t.Reason, Error: t.Error, ExitCode: t.ExitCode, Steps: t.Steps, FinishedAt: t.FinishedAt})
	}
	return out
}

func eventOut(e events.Event) apitypes.Event {
	d := e.Data
	if !json.Valid(d) {
		d = json.RawMessage("{}")
	}
	return apitypes.Event{ID: e.ID, Type: e.Type, Subject: e.Subject, Time: e.Time, Data: d}
}

func webhookOut(w *webhooks.Webhook) apitypes.Webhook {
	evs := w.Events
	if evs == nil {
		evs = []string{}
	}
	return apitypes.Webhook{ID: w.ID, URL: w.URL, Events: evs, Format: w.Format, Description: w.Description,
		Enabled: w.Enabled, DisabledReason: w.DisabledReason, FailingSince: w.FailingSince, CreatedAt: w.CreatedAt,
		UpdatedAt: w.UpdatedAt}
}

func deliveryOut(d webhooks.Delivery) apitypes.WebhookDelivery {
	return apitypes.WebhookDelivery{ID: d.ID, EventID: d.EventID, MessageID: d.MessageID, EventType: d.EventType,
		Status: d.State, Attempts: d.Attempts, NextAttemptAt: d.NextAttemptAt, LastAttemptAt: d.LastAttemptAt,
		ResponseCode: d.ResponseCode, LatencyMS: d.LatencyMS, Error: d.Error, ResponseExcerpt: d.ResponseExcerpt,
		CreatedAt: d.CreatedAt, DeliveredAt: d.DeliveredAt}
}
