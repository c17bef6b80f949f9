package helmtest

import (
	"bytes"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// Object is a decoded manifest: a typed Kubernetes object, or for the
// custom resources the chart renders (no Go types of theirs in this module)
// one of the structural types below.
type Object struct {
	Manifest
	Kind string
	Name string
	Obj  any
}

// Decoder decodes manifests strictly: an unknown or duplicated field, or a
// wrong type, is an error, as `kubectl apply --validate=strict` would say.
type Decoder struct{ d runtime.Decoder }

// NewDecoder returns a strict decoder of the built-in Kubernetes kinds.
func NewDecoder() Decoder {
	return Decoder{serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()}
}

// Decode decodes m.
func (d Decoder) Decode(m Manifest) (Object, error) {
	var head struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
	}
	if err := yaml.Unmarshal(m.YAML, &head); err != nil {
		return Object{}, fmt.Errorf("%s: %w", m.Source, err)
	}
	o := Object{Manifest: m, Kind: head.Kind, Name: head.Metadata.Name}
	var into any
	switch head.APIVersion + "/" + head.Kind {
	case "monitoring.coreos.com/v1/ServiceMonitor":
		into = &ServiceMonitor{}
	case "monitoring.coreos.com/v1/PrometheusRule":
		into = &PrometheusRule{}
	case "gateway.networking.k8s.io/v1/HTTPRoute":
		into = &HTTPRoute{}
	default:
		obj, _, err := d.d.Decode(m.YAML, nil, nil)
		if err != nil {
			return o, fmt.Errorf("%s: %s %s: %w", m.Source, head.Kind, head.Metadata.Name, err)
		}
		o.Obj = obj
		return o, nil
	}
	j, err := yaml.YAMLToJSON(m.YAML)
	if err != nil {
		return o, fmt.Errorf("%s: %w", m.Source, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return o, fmt.Errorf("%s: %s %s: %w", m.Source, head.Kind, head.Metadata.Name, err)
	}
	o.Obj = into
	return o, nil
}

// ServiceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor the
// chart uses; any other field is refused.
type ServiceMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// PrometheusRule is the part of monitoring.coreos.com/v1 PrometheusRule the
// chart uses.
type PrometheusRule struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []Rule `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// Rule is one alerting rule.
type Rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// HTTPRoute is the part of gateway.networking.k8s.io/v1 HTTPRoute the chart
// uses.
type HTTPRoute struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		ParentRefs []struct {
			Name        string `json:"name"`
			Namespace   string `json:"namespace,omitempty"`
			SectionName string `json:"sectionName,omitempty"`
		} `json:"parentRefs"`
		Hostnames []string `json:"hostnames,omitempty"`
		Rules     []struct {
			Matches []struct {
				Path struct {
					Type  string `json:"type"`
					Value string `json:"value"`
				} `json:"path"`
			} `json:"matches"`
			BackendRefs []struct {
				Name string `json:"name"`
				Port int32  `json:"port"`
			} `json:"backendRefs"`
		} `json:"rules"`
	} `json:"spec"`
}
