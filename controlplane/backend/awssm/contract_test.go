package awssm_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSM speaks the AWS Secrets Manager JSON 1.1 protocol (POST /,
// X-Amz-Target: secretsmanager.<Operation>, JSON bodies, epoch-second
// dates, errors as {"__type": ...} with HTTP 400) for the calls the backend
// makes, with version stages as AWS documents them: a new AWSCURRENT moves
// the previous one to AWSPREVIOUS. No AWS Secrets Manager emulator can be
// had here, so the backend is verified at the protocol level only.
type fakeSM struct {
	mu      sync.Mutex
	secrets map[string]*fakeSecret // by name
	calls   []string
	t       *testing.T
}

type fakeSecret struct {
	name     string
	versions []*fakeVersion
}

type fakeVersion struct {
	id      string
	value   string
	binary  bool // served as SecretBinary (base64 in the JSON protocol)
	stages  []string
	created time.Time
}

func newFakeSM(t *testing.T) (*fakeSM, *httptest.Server) {
	f := &fakeSM{secrets: map[string]*fakeSecret{}, t: t}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeSM) arn(name string) string {
	return "arn:aws:secretsmanager:us-east-1:123456789012:secret:" + name + "-AbCdEf"
}

// lookup accepts a name or the ARN form.
func (f *fakeSM) lookup(id string) *fakeSecret {
	if s := f.secrets[id]; s != nil {
		return s
	}
	for _, s := range f.secrets {
		if f.arn(s.name) == id {
			return s
		}
	}
	return nil
}

func (f *fakeSM) put(name, value string, stages ...string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	if s == nil {
		s = &fakeSecret{name: name}
		f.secrets[name] = s
	}
	if len(stages) == 0 {
		stages = []string{"AWSCURRENT"}
	}
	for _, st := range stages {
		if st != "AWSCURRENT" {
			continue
		}
		for _, v := range s.versions {
			v.stages = remove(remove(v.stages, "AWSPREVIOUS"), "")
			if contains(v.stages, "AWSCURRENT") {
				v.stages = append(remove(v.stages, "AWSCURRENT"), "AWSPREVIOUS")
			}
		}
	}
	id := fmt.Sprintf("EXAMPLE%d-90ab-cdef-fedc-ba987SECRET1", len(s.versions)+1)
	s.versions = append(s.versions, &fakeVersion{id: id, value: value, stages: stages, created: time.Unix(1_800_000_000+int64(len(s.versions)), 0)})
	return id
}

// putBinary stores a binary secret (SecretBinary).
func (f *fakeSM) putBinary(name string, value []byte) string {
	id := f.put(name, string(value))
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	s.versions[len(s.versions)-1].binary = true
	return id
}

func (f *fakeSM) serve(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	if r.Method != http.MethodPost || !strings.HasPrefix(target, "secretsmanager.") || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-amz-json-1.1") {
		http.Error(w, "not the Secrets Manager protocol", http.StatusBadRequest)
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		awsError(w, "UnrecognizedClientException", "missing SigV4 signature")
		return
	}
	var in map[string]any
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		awsError(w, "InvalidRequestException", "bad JSON")
		return
	}
	op := strings.TrimPrefix(target, "secretsmanager.")
	f.mu.Lock()
	f.calls = append(f.calls, op)
	f.mu.Unlock()
	id, _ := in["SecretId"].(string)
	switch op {
	case "GetSecretValue":
		f.mu.Lock()
		defer f.mu.Unlock()
		s := f.lookup(id)
		if s == nil {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		vid, _ := in["VersionId"].(string)
		stage, _ := in["VersionStage"].(string)
		if vid == "" && stage == "" {
			stage = "AWSCURRENT"
		}
		for _, v := range s.versions {
			if (vid != "" && v.id == vid) || (vid == "" && contains(v.stages, stage)) {
				out := map[string]any{"ARN": f.arn(s.name), "Name": s.name, "VersionId": v.id, "SecretString": v.value,
					"VersionStages": v.stages, "CreatedDate": float64(v.created.Unix())}
				if v.binary {
					delete(out, "SecretString")
					out["SecretBinary"] = base64.StdEncoding.EncodeToString([]byte(v.value))
				}
				writeJSON(w, out)
				return
			}
		}
		awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret value for staging label or version id.")
	case "DescribeSecret":
		f.mu.Lock()
		defer f.mu.Unlock()
		s := f.lookup(id)
		if s == nil {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		stages := map[string][]string{}
		for _, v := range s.versions {
			if len(v.stages) > 0 {
				stages[v.id] = v.stages
			}
		}
		last := s.versions[len(s.versions)-1]
		writeJSON(w, map[string]any{"ARN": f.arn(s.name), "Name": s.name, "VersionIdsToStages": stages,
			"CreatedDate": float64(s.versions[0].created.Unix()), "LastChangedDate": float64(last.created.Unix())})
	case "PutSecretValue":
		value, _ := in["SecretString"].(string)
		if tok, _ := in["ClientRequestToken"].(string); len(tok) < 32 {
			awsError(w, "InvalidParameterException", "ClientRequestToken must be 32 to 64 characters")
			return
		}
		f.mu.Lock()
		s := f.lookup(id)
		f.mu.Unlock()
		if s == nil {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		vid := f.put(s.name, value)
		writeJSON(w, map[string]any{"ARN": f.arn(s.name), "Name": s.name, "VersionId": vid, "VersionStages": []string{"AWSCURRENT"}})
	default:
		awsError(w, "InvalidRequestException", "operation not supported by this contract server: "+op)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(v)
}

func awsError(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", code)
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func remove(ss []string, s string) []string {
	var out []string
	for _, x := range ss {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}
